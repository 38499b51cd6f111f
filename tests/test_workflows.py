"""The example workflows without ComfyUI: UI files (as the frontend saves them) and their API twins reference only our
nodes and stock ones, with valid widget values and consistent links. Stock node specs are written out below from
ComfyUI 0.3.64-0.33 (same inputs in both); ours come from the node classes, with ComfyUI stubbed."""

from __future__ import annotations

import json

import pytest
from comfy_host import EXAMPLES, MODEL_FILES, SAMPLERS, SCHEDULERS, install_comfy_stubs, load_nodes_package

SEED = ("INT", {"min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True})
STOCK = {  # type -> (inputs in ComfyUI's order, output types)
    "KSampler": (
        {
            "model": ("MODEL", {}),
            "seed": SEED,
            "steps": ("INT", {"min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"min": 0.0, "max": 100.0}),
            "sampler_name": (SAMPLERS, {}),
            "scheduler": (SCHEDULERS, {}),
            "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}),
            "latent_image": ("LATENT", {}),
            "denoise": ("FLOAT", {"min": 0.0, "max": 1.0}),
        },
        ["LATENT"],
    ),
    "EmptyLatentImage": (
        {n: ("INT", {"min": 16, "max": 16384}) for n in ("width", "height")} | {"batch_size": ("INT", {"min": 1})},
        ["LATENT"],
    ),
    "VAELoader": ({"vae_name": (MODEL_FILES["vae"], {})}, ["VAE"]),
    "VAEDecode": ({"samples": ("LATENT", {}), "vae": ("VAE", {})}, ["IMAGE"]),
    "SaveImage": ({"images": ("IMAGE", {}), "filename_prefix": ("STRING", {})}, []),
}
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    install_comfy_stubs(monkeypatch, tmp_path_factory.mktemp("models"))
    ours = {}
    for name, cls in load_nodes_package().NODE_CLASS_MAPPINGS.items():
        declared = cls.INPUT_TYPES()
        ours[name] = ({**declared.get("required", {}), **declared.get("optional", {})}, list(cls.RETURN_TYPES))
    yield {**STOCK, **ours}
    monkeypatch.undo()


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
    control_after_generate is followed by its control value)."""
    values, found = iter(node.get("widgets_values", [])), {}
    for input_name, spec in inputs.items():
        if is_widget(spec):
            found[input_name] = next(values)
            if spec[1].get("control_after_generate"):
                assert next(values) in CONTROL_VALUES, f"{where}: bad control_after_generate value"
    assert next(values, None) is None, f"{where}: more widget values than widgets"
    return found


def load(name: str) -> tuple[dict, dict]:
    return json.loads((EXAMPLES / f"{name}.json").read_text()), json.loads(
        (EXAMPLES / "api" / f"{name}.json").read_text()
    )


def test_the_four_examples_exist():
    assert sorted(p.stem for p in (EXAMPLES / "api").glob("*.json")) == NAMES
    prompts = {name: load(name)[1] for name in NAMES}
    kinds = {name: {n["class_type"] for n in p.values()} for name, p in prompts.items()}
    inputs = {name: [n["inputs"] for n in p.values()] for name, p in prompts.items()}
    assert any({"PixArtSigmaDiTLoader", "KSampler"} <= k for k in kinds.values()), "no stock-KSampler example"
    assert any(
        i.get("kv_compress", "off") != "off" and i.get("variant") == "sigma-2k" for v in inputs.values() for i in v
    )
    assert any(i.get("model_family") == "alpha" for v in inputs.values() for i in v)
    assert all("SaveImage" in k and "VAEDecode" in k for k in kinds.values())


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow(specs, name):
    ui, _ = load(name)
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
        assert [o["type"] for o in node["outputs"]] == outputs, where
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind and link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["type"] == kind and nodes[dst]["inputs"][dst_slot]["link"] == link_id


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_matches(specs, name):
    ui, api = load(name)
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
