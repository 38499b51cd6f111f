"""The node classes without ComfyUI: declared inputs/outputs, tooltips, defaults, categories, names, and the pure
helpers the nodes use (caption padding, input checks, model lookup, sizes). ComfyUI is replaced by small stubs."""

from __future__ import annotations

import inspect
import types

import pytest
import torch
from comfy_host import REPO, SAMPLERS, install_comfy_stubs, load_nodes_package

import pixart

OURS = ["PixArtSigmaT5Loader", "PixArtSigmaTextEncode", "PixArtSigmaDiTLoader", "PixArtSigmaSampler"]
EXPECTED = {*OURS, "PixArtSigmaResolution"}
if (REPO / "nodes" / "lora_loader.py").is_file():  # another file of the pack, registered when present
    EXPECTED.add("PixArtSigmaLoraLoader")
CATEGORIES = {"PixArt-Σ", "PixArt-Σ/advanced"}
SOCKET_TYPES = {"MODEL", "CONDITIONING", "LATENT", "PIXART_T5", "IMAGE", "VAE", "CLIP"}


@pytest.fixture
def stubs(monkeypatch, tmp_path):
    install_comfy_stubs(monkeypatch, tmp_path)
    (tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS" / "transformer").mkdir(parents=True)
    (tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS" / "model_index.json").write_text("{}")
    (tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS" / "transformer" / "model.safetensors").write_text("")
    (tmp_path / "text_encoders" / "t5-v1_1-xxl").mkdir(parents=True)
    (tmp_path / "text_encoders" / "t5-v1_1-xxl" / "config.json").write_text("{}")
    (tmp_path / "text_encoders" / "t5-v1_1-xxl" / "spiece.model").write_text("")
    return tmp_path


@pytest.fixture
def nodes(stubs):
    return load_nodes_package()


def all_inputs(cls) -> dict:
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}, cls
    return {**spec.get("required", {}), **spec.get("optional", {})}


def test_mappings_and_display_names(nodes):
    assert set(nodes.NODE_CLASS_MAPPINGS) == EXPECTED
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        assert cls.__name__ == name
        title = nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
        assert title == cls.TITLE and title.isascii() and "PixArt Sigma" in title
        assert cls.CATEGORY in CATEGORIES
        assert "PixArt Sigma" in cls.DESCRIPTION  # ASCII words, so node search finds them


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_declared_inputs_and_outputs(nodes, name):
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    inputs = all_inputs(cls)
    function = getattr(cls, cls.FUNCTION)
    parameters = inspect.signature(function).parameters
    assert set(inputs) <= set(parameters), f"{name}.{cls.FUNCTION} lacks parameters for {set(inputs) - set(parameters)}"
    for input_name, spec in inputs.items():
        where = f"{name}.{input_name}"
        assert isinstance(spec, tuple) and len(spec) == 2, where
        kind, options = spec
        tooltip = options.get("tooltip", "")
        assert isinstance(tooltip, str) and len(tooltip) > 15, f"{where}: tooltip {tooltip!r}"
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
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert all(isinstance(t, str) and len(t) > 15 for t in cls.OUTPUT_TOOLTIPS)
    assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)


def test_reference_defaults_and_lists(nodes, stubs):
    sampler = all_inputs(nodes.NODE_CLASS_MAPPINGS["PixArtSigmaSampler"])
    assert (sampler["steps"][1]["default"], sampler["cfg"][1]["default"]) == (20, 4.5)
    assert sampler["sampler_name"][1]["default"] == "dpmpp_2m" and sampler["sampler_name"][0] == SAMPLERS
    dit = all_inputs(nodes.NODE_CLASS_MAPPINGS["PixArtSigmaDiTLoader"])
    assert "PixArt-Sigma-XL-2-1024-MS/" in dit["ckpt_name"][0]  # diffusers folder, listed once
    assert not [n for n in dit["ckpt_name"][0] if n.startswith("PixArt-Sigma-XL-2-1024-MS/transformer")]
    assert "PixArt-Sigma-XL-2-1024-MS.pth" in dit["ckpt_name"][0]
    assert set(dit["variant"][0]) == {"auto", *pixart.VARIANTS}
    assert dit["kv_compress"][0][0] == "off"
    t5 = all_inputs(nodes.NODE_CLASS_MAPPINGS["PixArtSigmaT5Loader"])
    assert "t5-v1_1-xxl/" in t5["t5_name"][0] and "t5-v1_1-xxl/" in t5["tokenizer"][0]


def test_find_model_refuses_paths_outside_the_folder(nodes, stubs):
    common = nodes.common
    assert common.find_model(["diffusion_models"], "PixArt-Sigma-XL-2-1024-MS/").is_dir()
    (stubs / "secret.pth").write_text("x")
    with pytest.raises(FileNotFoundError, match="not found in models folders"):
        common.find_model(["diffusion_models"], "../secret.pth")


def test_pad_caption(nodes):
    pad = nodes.common.pad_caption
    caption, mask = pad(torch.ones(1, 7, 8), None, 300)  # CLIPTextEncode: no mask, every token counts
    assert caption.shape == (1, 300, 8) and mask.shape == (1, 300)
    assert mask[0, :7].all() and not mask[0, 7:].any() and not caption[0, 7:].any()
    caption, mask = pad(torch.ones(2, 5, 8), torch.tensor([[1, 1, 0, 0, 0]]), 120)  # a given mask, broadcast
    assert mask[:, :2].all() and not mask[:, 2:].any() and caption.shape == (2, 120, 8)
    caption, mask = pad(torch.ones(1, 301, 8), torch.ones(1, 300), 300)  # concatenated conditioning: 2 x 300
    assert caption.shape == (1, 600, 8) and mask[0, :301].all() and not mask[0, 301:].any()


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 16, 64, 64), "16 channels|expected 4 channels"), ((1, 4, 125, 125), "1000x1000 px is not a multiple of 16")],
)
def test_check_latent_errors(nodes, shape, message):
    with pytest.raises(ValueError, match=message.split("|")[-1]):
        nodes.common.check_latent(pixart.VARIANTS["sigma-1024"], shape, "PixArt Sigma Sampler")
    nodes.common.check_latent(pixart.VARIANTS["sigma-1024"], (2, 4, 128, 96), "ok")


def test_sampler_checks_then_calls_comfy(nodes, monkeypatch):
    calls = []
    comfy_nodes = types.ModuleType("nodes")
    comfy_nodes.common_ksampler = lambda *args, **kwargs: calls.append((args, kwargs)) or ("latent",)
    monkeypatch.setitem(__import__("sys").modules, "nodes", comfy_nodes)
    config = pixart.VARIANTS["sigma-1024"]
    model = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=types.SimpleNamespace(config=config)))
    sampler = nodes.NODE_CLASS_MAPPINGS["PixArtSigmaSampler"]()
    args = (model, "pos", "neg")
    with pytest.raises(ValueError, match="expected 4 channels"):
        sampler.sample(*args, {"samples": torch.ones(1, 16, 8, 8)}, 1, 20, 4.5, "dpmpp_2m", "sgm_uniform", 1.0)
    assert sampler.sample(*args, {"samples": torch.zeros(1, 16, 8, 8)}, 1, 20, 4.5, "euler", "normal", 1.0)
    assert sampler.sample(*args, {"samples": torch.zeros(1, 4, 8, 8)}, 1, 20, 4.5, "euler", "normal", 0.5)
    assert len(calls) == 2 and calls[1][1] == {"denoise": 0.5}


def test_text_encode_keeps_the_real_tokens(nodes):
    class FakeT5:
        device = torch.device("cpu")

        def encode(self, prompts, max_length):
            self.max_length = max_length
            mask = torch.zeros(1, max_length, dtype=torch.long)
            mask[0, :5] = 1
            return torch.arange(max_length * 3, dtype=torch.float32).reshape(1, max_length, 3), mask

    t5 = FakeT5()
    ((cond, extra),) = nodes.NODE_CLASS_MAPPINGS["PixArtSigmaTextEncode"]().encode(t5, "a cat", "alpha")[0]
    assert t5.max_length == 120 and cond.shape == (1, 5, 3) and cond.dtype == torch.float32
    assert extra["attention_mask"].shape == (1, 5) and extra["attention_mask"].all()


@pytest.mark.parametrize(
    ("base", "ratio", "size", "expected", "note"),
    [
        ("1024", "1.0 square", (0, 0), (1024, 1024), "bin 1.0"),
        ("1024", "0.57 landscape", (0, 0), (1344, 768), "bin 0.57"),
        ("2048", "0.26 landscape", (0, 0), (3968, 1024), "bin 0.26"),
        ("1024", "0.26 landscape", (0, 0), (2048, 512), "bin 0.26"),  # not in the 1024 table: closest ratio
        ("4096", "1.0 square", (0, 0), (4096, 4096), "bin 1.0"),
        ("512", "closest bin to width x height", (1920, 1080), (672, 384), "trained bin"),
        ("1024", "custom (width x height, snapped)", (1000, 777), (1008, 784), "snapped to 1008x784"),
        ("1024", "custom (width x height, snapped)", (1024, 768), (1024, 768), "custom 1024x768"),
    ],
)
def test_resolution(nodes, base, ratio, size, expected, note):
    node = nodes.NODE_CLASS_MAPPINGS["PixArtSigmaResolution"]()
    latent, width, height, text = node.resolve(base, ratio, size[0], size[1], 2)
    assert (width, height) == expected and note in text
    assert latent["samples"].shape == (2, 4, height // 8, width // 8)


def test_dtype_and_choice_errors(nodes):
    with pytest.raises(ValueError, match="no float3"):
        nodes.common.torch_dtype("float3")
    with pytest.raises(ValueError, match="'fp7' is not one of"):
        nodes.common.pick({"fp16": 1}, "fp7", "PixArt Sigma DiT Loader weight_dtype")


def test_top_level_package_imports_without_comfyui():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pack_without_comfy", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {}
