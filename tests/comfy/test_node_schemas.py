"""The node classes as the session's ComfyUI sees them (marker ``comfy``): the entry point's list, declared inputs and
outputs (what /object_info shows), tooltips, defaults, categories, names, the model lists, and the checks
``validate_inputs`` reports on a node before a prompt runs."""

from __future__ import annotations

import asyncio
import inspect
import math
from pathlib import Path

import pytest
from node_calls import add_model_folder
from node_info import object_info, v1_inputs, v1_outputs

import pixart

pytestmark = pytest.mark.comfy
REPO = Path(__file__).resolve().parents[2]
EXPECTED = {"PixArtSigmaT5Loader", "PixArtSigmaTextEncode", "PixArtSigmaDiTLoader", "PixArtSigmaSampler",
            "PixArtSigmaResolution", "PixArtSigmaLoraLoader", "PixArtSigmaFewStepSchedule",
            "PixArtSigmaNoiseSchedule", "PixArtSigmaCLIPTextEncode", "PixArtSigmaCache",
            "PixArtSigmaControlNetLoader", "PixArtSigmaTrainingDataset", "PixArtSigmaTrain",
            "PixArtSigmaSaveTrained"}  # fmt: skip
TITLES = {"PixArtSigmaSampler": "PixArt Sigma Sampler", "PixArtSigmaLoraLoader": "PixArt Sigma LoRA Loader",
          "PixArtSigmaDiTLoader": "PixArt Sigma DiT Loader"}  # fmt: skip
CATEGORIES = {"PixArt-Sigma", "PixArt-Sigma/advanced", "PixArt-Sigma/training"}
SOCKET_TYPES = {"MODEL", "CONDITIONING", "LATENT", "PIXART_T5", "IMAGE", "VAE", "CLIP", "SAMPLER", "SIGMAS",
                "CONTROL_NET", "PIXART_TRAINING_DATA", "PIXART_TRAINED"}  # fmt: skip


@pytest.fixture(scope="module")
def classes(comfyui):
    """{node id: class} of the pack's nodes as ComfyUI registered them."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    return {name: comfy_nodes.NODE_CLASS_MAPPINGS[name] for name in EXPECTED}


def test_entry_point_lists_the_nodes(comfyui, classes):
    pack_nodes = comfyui.module("nodes")
    node_api = comfyui.module("nodes.node_api")
    extension = asyncio.run(pack_nodes.comfy_entrypoint())
    listed = asyncio.run(extension.get_node_list())
    assert {node.define_schema().node_id for node in listed} == EXPECTED
    for node in listed:
        info = node.define_schema()
        assert classes[info.node_id] is node, f"ComfyUI registered another class as {info.node_id}"
        assert node.__name__ == info.node_id
        assert info.display_name.isascii() and "PixArt Sigma" in info.display_name
        assert info.category in CATEGORIES
        assert "PixArt Sigma" in info.description and len(info.description) > 60  # says what the node does
        if "search_aliases" in node_api.SCHEMA_FIELDS:  # ComfyUI 0.33; 0.3.64's Schema has no such field
            assert info.search_aliases and all(isinstance(a, str) for a in info.search_aliases)


def test_search_aliases_only_where_the_host_has_them(comfyui, monkeypatch):
    """ComfyUI 0.3.64's Schema has no search_aliases field: the schema leaves it out there."""
    import dataclasses

    node_api = comfyui.module("nodes.node_api")
    real = {field.name for field in dataclasses.fields(node_api.io.Schema)}
    assert real == node_api.SCHEMA_FIELDS
    monkeypatch.setattr(node_api, "SCHEMA_FIELDS", node_api.SCHEMA_FIELDS - {"search_aliases"})
    monkeypatch.setattr(node_api.io, "Schema", lambda **fields: fields)
    assert "search_aliases" not in node_api.schema(node_id="x", search_aliases=["y"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_declared_inputs_and_outputs(classes, models, model_folders, name):  # every file list holds a file
    cls = classes[name]
    inputs = v1_inputs(name)
    parameters = inspect.signature(cls.execute).parameters
    assert list(inputs) == list(parameters), f"{name}.execute parameters differ from its inputs"
    for input_name, spec in inputs.items():
        where = f"{name}.{input_name}"
        kind, options = spec
        tooltip = options.get("tooltip", "")
        assert isinstance(tooltip, str) and len(tooltip) > 15, f"{where}: tooltip {tooltip!r}"
        tooltip.encode("cp1252")
        if isinstance(kind, list):
            assert kind and all(isinstance(c, str) for c in kind), where
            assert options.get("default", kind[0]) in kind, f"{where}: default not among the choices"
        elif kind in ("INT", "FLOAT"):
            number = int if kind == "INT" else (int, float)
            low, high, default = options["min"], options["max"], options["default"]
            assert isinstance(default, number) and low <= default <= high, where
            assert options.get("step", 1) > 0, where
        elif kind == "BOOLEAN":
            assert isinstance(options["default"], bool), where
        elif kind == "STRING":
            assert isinstance(options.get("default", ""), str), where
        else:
            assert kind in SOCKET_TYPES, f"{where}: unknown type {kind!r}"
    info = object_info(name)
    assert info["output"] and len(info["output_tooltips"]) == len(info["output"]), name
    assert all(len(tooltip) > 15 for tooltip in info["output_tooltips"]), name
    for check in ("validate_inputs", "fingerprint_inputs"):
        if check in vars(cls):  # declared inputs must be real inputs: ComfyUI passes them by name
            declared = set(inspect.signature(getattr(cls, check)).parameters)
            assert declared <= set(inputs), f"{name}.{check} declares {declared - set(inputs)}"


@pytest.fixture
def model_folders(monkeypatch, tmp_path):
    """A diffusers pipeline folder, a T5 folder, a LoRA and a ControlNet file, each in a models folder ComfyUI lists
    first for this test."""
    pipeline = tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS"
    (pipeline / "transformer").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    (pipeline / "transformer" / "model.safetensors").write_text("")
    (tmp_path / "text_encoders" / "t5-v1_1-xxl").mkdir(parents=True)
    (tmp_path / "text_encoders" / "t5-v1_1-xxl" / "config.json").write_text("{}")
    (tmp_path / "text_encoders" / "t5-v1_1-xxl" / "spiece.model").write_text("")
    for kind, name in (("loras", "pixart_style.safetensors"), ("controlnet", "pixart_controlnet.safetensors")):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / name).write_text("")  # listed by name only: combos have a choice to check
    for kind in ("diffusion_models", "text_encoders", "loras", "controlnet"):
        add_model_folder(monkeypatch, kind, tmp_path / kind)
    return tmp_path


def test_reference_defaults_and_lists(comfyui, models, model_folders):
    import comfy.samplers

    sampler = v1_inputs("PixArtSigmaSampler")
    assert (sampler["steps"][1]["default"], sampler["cfg"][1]["default"]) == (20, 4.5)
    assert sampler["sampler_name"][1]["default"] == "dpmpp_2m"
    assert sampler["sampler_name"][0] == list(comfy.samplers.KSampler.SAMPLERS)
    assert sampler["seed"][1]["control_after_generate"] is True
    dit = v1_inputs("PixArtSigmaDiTLoader")
    assert "PixArt-Sigma-XL-2-1024-MS/" in dit["ckpt_name"][0]  # diffusers folder, listed once
    assert not [n for n in dit["ckpt_name"][0] if n.startswith("PixArt-Sigma-XL-2-1024-MS/transformer")]
    assert "PixArt-Sigma-XL-2-1024-MS.pth" in dit["ckpt_name"][0]
    assert set(dit["variant"][0]) == {"auto", *pixart.VARIANTS}
    assert dit["kv_compress"][0] == ["off", "avgpool", "uniform", "ave", "conv"]
    assert set(dit["kv_compress"][0][1:]) == set(pixart.config.KV_MODES)
    t5 = v1_inputs("PixArtSigmaT5Loader")
    assert "t5-v1_1-xxl/" in t5["t5_name"][0] and "t5-v1_1-xxl/" in t5["tokenizer"][0]
    encode = v1_inputs("PixArtSigmaTextEncode")
    assert encode["model_family"][0] == ["sigma", "alpha"]
    assert comfyui.module("nodes.t5").MAX_TOKENS == {"sigma": 300, "alpha": 120}
    assert v1_outputs("PixArtSigmaResolution") == ["LATENT", "INT", "INT", "STRING"]
    assert object_info("PixArtSigmaResolution")["output_name"] == ["latent", "width", "height", "note"]


def test_each_module_uses_the_pack_own_pixart(comfyui):
    """The nodes import the model code relatively: ``<pack>.pixart`` from this folder, not a top-level ``pixart``."""
    import sys

    pack_pixart = comfyui.module("pixart")
    assert comfyui.module("nodes.sampler").PixArtConfig is pack_pixart.PixArtConfig
    assert Path(pack_pixart.__file__).resolve() == REPO / "pixart" / "__init__.py"
    for name, module in list(sys.modules.items()):
        if name.startswith(f"{comfyui.package}.nodes"):
            source = Path(module.__file__).read_text(encoding="utf-8")
            assert "from pixart" not in source and "import pixart" not in source, name


@pytest.mark.parametrize(
    ("node", "inputs", "message"),
    [
        ("PixArtSigmaSampler", {"cfg": math.nan, "denoise": 1.0}, "cfg must be a finite number, got nan"),
        ("PixArtSigmaSampler", {"cfg": 4.5, "denoise": math.inf}, "denoise must be a finite number"),
        ("PixArtSigmaSampler", {"cfg": 101.0, "denoise": 1.0}, "cfg must be between 0.0 and 100.0, got 101.0"),
        ("PixArtSigmaSampler", {"cfg": 4.5, "denoise": -0.5}, "denoise must be between 0.0 and 1.0"),
        ("PixArtSigmaLoraLoader", {"strength": math.nan}, "strength must be a finite number"),
        ("PixArtSigmaLoraLoader", {"strength": 11.0}, "strength must be between -10.0 and 10.0"),
        ("PixArtSigmaDiTLoader", {"kv_compress": "avgpool", "kv_layers": "14-x"}, "kv_layers: KV layers '14-x'"),
        ("PixArtSigmaDiTLoader", {"kv_compress": "avgpool", "kv_layers": "9-3"}, "'9-3' is outside"),
        ("PixArtSigmaDiTLoader", {"kv_compress": "blur", "kv_layers": "auto"}, "kv_compress: 'blur' is not one of"),
    ],
)
def test_validate_inputs_reports_on_the_node(classes, node, inputs, message):
    """What validate_inputs returns is shown on the node by ComfyUI before the prompt runs."""
    answer = classes[node].validate_inputs(**inputs)
    assert isinstance(answer, str) and message in answer and answer.startswith(TITLES[node] + ": ")


@pytest.mark.parametrize(
    ("node", "inputs"),
    [
        ("PixArtSigmaSampler", {"cfg": 1.0, "denoise": 0.0}),
        ("PixArtSigmaSampler", {"cfg": None, "denoise": None}),  # linked from other nodes: checked when run
        ("PixArtSigmaLoraLoader", {"strength": -10.0}),
        ("PixArtSigmaDiTLoader", {"kv_compress": "off", "kv_layers": "not checked when off"}),
        ("PixArtSigmaDiTLoader", {"kv_compress": "conv", "kv_layers": " Auto "}),
        ("PixArtSigmaDiTLoader", {"kv_compress": "uniform", "kv_layers": "0,2,4-6"}),
        ("PixArtSigmaDiTLoader", {"kv_compress": None, "kv_layers": "x"}),
    ],
)
def test_validate_inputs_accepts_good_values(classes, node, inputs):
    assert classes[node].validate_inputs(**inputs) is True
