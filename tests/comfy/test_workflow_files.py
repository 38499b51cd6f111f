"""The example workflows against the real node schemas of the session's ComfyUI (marker ``comfy``): UI files (as the
frontend saves them) and their API twins reference only our nodes and stock ones, with valid widget values (the
model names among the files ComfyUI lists) and consistent links. Checked for the examples shipped now and for the
four shipped with 0.1 (tests/fixtures/workflows_v0_1/, kept as saved: users' files must keep loading, widget by
widget, through the V3 nodes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from node_info import v1_inputs, v1_outputs

pytestmark = pytest.mark.comfy
REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"examples": REPO / "example_workflows", "v0_1": REPO / "tests" / "fixtures" / "workflows_v0_1"}
CASES = [(folder, p.stem) for folder, path in FOLDERS.items() for p in sorted(path.glob("*.json"))]
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


@pytest.fixture(scope="module")
def specs(models):
    """{node type: (inputs, output types)} of every node the workflows use, as ComfyUI describes them (its model
    lists hold the session's tiny files: every model file the workflows name)."""
    kinds = {n["type"] for folder, name in CASES for n in load(name, folder)[0]["nodes"]}
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    missing = kinds - set(comfy_nodes.NODE_CLASS_MAPPINGS)
    assert not missing, f"node types the workflows use that this ComfyUI does not register: {sorted(missing)}"
    return {kind: (v1_inputs(kind), v1_outputs(kind)) for kind in kinds}


def is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_KINDS


def check_value(where: str, spec, value) -> None:
    kind, options = spec
    if isinstance(kind, list):
        assert value in kind, f"{where}: {value!r} is not one of {kind[:8]}..."
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, int if kind == "INT" else (int, float)) and not isinstance(value, bool), where
        assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value} out of range"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    else:
        assert isinstance(value, str), where


def widget_values(where: str, node: dict, inputs: dict) -> dict:
    """{widget name: value} from a UI node's widgets_values (ComfyUI's input order; a seed with
    control_after_generate is followed by its control value, an image_upload list (LoadImage) by its upload button's
    "image")."""
    values, found = iter(node.get("widgets_values", [])), {}
    for input_name, spec in inputs.items():
        if is_widget(spec):
            found[input_name] = next(values)
            if spec[1].get("control_after_generate"):
                assert next(values) in CONTROL_VALUES, f"{where}: bad control_after_generate value"
            if spec[1].get("image_upload"):
                assert next(values) == "image", f"{where}: bad upload widget value"
    assert next(values, None) is None, f"{where}: more widget values than widgets"
    return found


def load(name: str, folder: str = "examples") -> tuple[dict, dict]:
    root = FOLDERS[folder]
    return json.loads((root / f"{name}.json").read_text()), json.loads((root / "api" / f"{name}.json").read_text())


@pytest.mark.parametrize(("folder", "name"), CASES)
def test_ui_workflow(specs, folder, name):
    ui, _ = load(name, folder)
    assert {"nodes", "links", "last_node_id", "last_link_id", "version"} <= set(ui)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and max(nodes) <= ui["last_node_id"]
    for node in ui["nodes"]:
        where = f"{name}: node {node['id']} {node['type']}"
        assert node["type"] in specs, f"{where}: not one of our nodes nor a known stock node"
        inputs, outputs = specs[node["type"]]
        for input_name, value in widget_values(where, node, inputs).items():
            check_value(f"{where}.{input_name}", inputs[input_name], value)
        sockets = {k: v[0] for k, v in inputs.items() if not is_widget(v)}
        assert {i["name"]: i["type"] for i in node["inputs"]} == sockets, where
        assert all(i["link"] is not None for i in node["inputs"]), f"{where}: an input is not connected"
        saved = [o["type"] for o in node["outputs"]]
        if node["type"].startswith("PixArtSigma"):
            assert saved == outputs, where
        else:  # a stock node may gain outputs (ComfyUI 0.33's SaveImage passes its images on): saved ones lead
            assert saved == outputs[: len(saved)], where
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind and link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["type"] == kind and nodes[dst]["inputs"][dst_slot]["link"] == link_id


@pytest.mark.parametrize(("folder", "name"), CASES)
def test_api_twin_matches(specs, folder, name):
    ui, api = load(name, folder)
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        inputs, _ = specs[node["type"]]
        given = api[str(node["id"])]["inputs"]
        assert set(given) == set(inputs), f"{name}: node {node['id']} inputs {set(given) ^ set(inputs)}"
        values = widget_values(f"{name}: node {node['id']}", node, inputs)
        assert {k: given[k] for k in values} == values, f"{name}: node {node['id']} widget values differ"
        for input_name, value in values.items():
            check_value(f"{name} (API): node {node['id']}.{input_name}", inputs[input_name], value)
        for socket in node["inputs"]:
            _, src, src_slot, _, _, kind = links[socket["link"]]
            assert given[socket["name"]] == [str(src), src_slot], f"{name}: node {node['id']}.{socket['name']}"
            assert specs[api[str(src)]["class_type"]][1][src_slot] == kind


def test_v0_1_widgets_line_up_with_the_v3_inputs(specs):
    """The 0.1 UI files store widget values by position: each lands on the input of the same name and meaning
    (the seed's control_after_generate value right after the seed)."""
    ui, _ = load("pixart_sigma_2k_kv_compress", "v0_1")
    by_type = {node["type"]: node for node in ui["nodes"]}
    dit = widget_values("dit", by_type["PixArtSigmaDiTLoader"], specs["PixArtSigmaDiTLoader"][0])
    assert dit["variant"] == "sigma-2k" and dit["kv_compress"] != "off" and isinstance(dit["kv_factor"], int)
    sampler_node = by_type["PixArtSigmaSampler"]
    sampler = widget_values("sampler", sampler_node, specs["PixArtSigmaSampler"][0])
    assert list(sampler) == ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert sampler_node["widgets_values"][1] in CONTROL_VALUES and sampler["cfg"] == 4.5
