"""The node classes without ComfyUI: declared inputs/outputs (V3 schemas), tooltips, defaults, categories, names,
input checks, and the pure helpers the nodes use (caption padding, model lookup, sizes, memory estimates). ComfyUI
and its V3 API are replaced by small stubs (tests/comfy_host.py, tests/node_pack.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import math
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from comfy_host import SAMPLERS, install_comfy_stubs
from node_pack import PACK, REPO, install_comfy_api_stub, load_pack, v1_inputs, v1_outputs

import pixart

EXPECTED = {"PixArtSigmaT5Loader", "PixArtSigmaTextEncode", "PixArtSigmaDiTLoader", "PixArtSigmaSampler",
            "PixArtSigmaResolution", "PixArtSigmaLoraLoader", "PixArtSigmaFewStepSchedule",
            "PixArtSigmaNoiseSchedule", "PixArtSigmaCLIPTextEncode", "PixArtSigmaCache",
            "PixArtSigmaControlNetLoader"}  # fmt: skip
TITLES = {"PixArtSigmaSampler": "PixArt Sigma Sampler", "PixArtSigmaLoraLoader": "PixArt Sigma LoRA Loader",
          "PixArtSigmaDiTLoader": "PixArt Sigma DiT Loader"}  # fmt: skip
CATEGORIES = {"PixArt-Sigma", "PixArt-Sigma/advanced"}
COMFY_FILE = re.compile(r"\b(comfy|comfy_api|comfy_extras|folder_paths|nodes)(\.\w+)*\.__file__")
SOCKET_TYPES = {"MODEL", "CONDITIONING", "LATENT", "PIXART_T5", "IMAGE", "VAE", "CLIP", "SAMPLER", "SIGMAS",
                "CONTROL_NET"}  # fmt: skip


@pytest.fixture
def stubs(monkeypatch, tmp_path):
    install_comfy_stubs(monkeypatch, tmp_path)
    install_comfy_api_stub(monkeypatch)
    (tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS" / "transformer").mkdir(parents=True)
    (tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS" / "model_index.json").write_text("{}")
    (tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS" / "transformer" / "model.safetensors").write_text("")
    (tmp_path / "text_encoders" / "t5-v1_1-xxl").mkdir(parents=True)
    (tmp_path / "text_encoders" / "t5-v1_1-xxl" / "config.json").write_text("{}")
    (tmp_path / "text_encoders" / "t5-v1_1-xxl" / "spiece.model").write_text("")
    return tmp_path


@pytest.fixture
def nodes(stubs):
    return load_pack()


@pytest.fixture
def classes(nodes):
    return {node.define_schema().node_id: node for node in nodes.NODES}


def pack_pixart():
    """The pack's own pixart package (``<pack>.pixart``), which the nodes import relatively."""
    return sys.modules[f"{PACK}.pixart"]


def test_entry_point_lists_the_nodes(nodes):
    extension = asyncio.run(nodes.comfy_entrypoint())
    listed = asyncio.run(extension.get_node_list())
    assert {node.define_schema().node_id for node in listed} == EXPECTED
    for node in listed:
        info = node.define_schema()
        assert node.__name__ == info.node_id
        assert info.display_name.isascii() and "PixArt Sigma" in info.display_name
        assert info.category in CATEGORIES
        assert "PixArt Sigma" in info.description and len(info.description) > 60  # says what the node does
        assert info.search_aliases and all(isinstance(a, str) for a in info.search_aliases)


def test_search_aliases_only_where_the_host_has_them(nodes, monkeypatch):
    """ComfyUI 0.3.64's Schema has no search_aliases field: the schema leaves it out there."""
    node_api = sys.modules[f"{PACK}.nodes.node_api"]
    monkeypatch.setattr(node_api, "SCHEMA_FIELDS", node_api.SCHEMA_FIELDS - {"search_aliases"})
    monkeypatch.setattr(node_api.io, "Schema", lambda **fields: fields)
    assert "search_aliases" not in node_api.schema(node_id="x", search_aliases=["y"])


def test_text_is_windows_safe():
    """Every source file of the nodes and the pack's __init__.py encodes in cp1252 (comfy-test's SYNTAX level)."""
    for path in [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py"))]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                line.encode("cp1252")
            except UnicodeEncodeError:
                pytest.fail(f"{path.name}:{number} is not cp1252: {line.strip()[:80]}")
        assert not COMFY_FILE.search(path.read_text()), f"{path.name} uses __file__ of a ComfyUI module"
        assert "sys.path" not in path.read_text(), path.name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_declared_inputs_and_outputs(classes, name):
    cls = classes[name]
    inputs = v1_inputs(cls)
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
    outputs = cls.define_schema().outputs
    assert outputs and all(len(o.options.get("tooltip", "")) > 15 for o in outputs), name
    for check in ("validate_inputs", "fingerprint_inputs"):
        if check in vars(cls):  # declared inputs must be real inputs: ComfyUI passes them by name
            declared = set(inspect.signature(getattr(cls, check)).parameters)
            assert declared <= set(inputs), f"{name}.{check} declares {declared - set(inputs)}"


def test_reference_defaults_and_lists(classes, stubs):
    sampler = v1_inputs(classes["PixArtSigmaSampler"])
    assert (sampler["steps"][1]["default"], sampler["cfg"][1]["default"]) == (20, 4.5)
    assert sampler["sampler_name"][1]["default"] == "dpmpp_2m" and sampler["sampler_name"][0] == SAMPLERS
    assert sampler["seed"][1]["control_after_generate"] is True
    dit = v1_inputs(classes["PixArtSigmaDiTLoader"])
    assert "PixArt-Sigma-XL-2-1024-MS/" in dit["ckpt_name"][0]  # diffusers folder, listed once
    assert not [n for n in dit["ckpt_name"][0] if n.startswith("PixArt-Sigma-XL-2-1024-MS/transformer")]
    assert "PixArt-Sigma-XL-2-1024-MS.pth" in dit["ckpt_name"][0]
    assert set(dit["variant"][0]) == {"auto", *pixart.VARIANTS}
    assert dit["kv_compress"][0] == ["off", "avgpool", "uniform", "ave", "conv"]
    assert set(dit["kv_compress"][0][1:]) == set(pixart.config.KV_MODES)
    t5 = v1_inputs(classes["PixArtSigmaT5Loader"])
    assert "t5-v1_1-xxl/" in t5["t5_name"][0] and "t5-v1_1-xxl/" in t5["tokenizer"][0]
    encode = v1_inputs(classes["PixArtSigmaTextEncode"])
    assert encode["model_family"][0] == ["sigma", "alpha"]
    assert sys.modules[f"{PACK}.nodes.text_encode"].MAX_TOKENS == {"sigma": 300, "alpha": 120}
    assert v1_outputs(classes["PixArtSigmaResolution"]) == ["LATENT", "INT", "INT", "STRING"]
    names = [o.options["display_name"] for o in classes["PixArtSigmaResolution"].define_schema().outputs]
    assert names == ["latent", "width", "height", "note"]


def test_each_module_uses_the_pack_own_pixart(nodes):
    """The nodes import the model code relatively: ``<pack>.pixart`` from this folder, not a top-level ``pixart``."""
    sampler = sys.modules[f"{PACK}.nodes.sampler"]
    assert sampler.PixArtConfig is pack_pixart().PixArtConfig
    assert pack_pixart().__file__ == str(REPO / "pixart" / "__init__.py")
    for name, module in list(sys.modules.items()):
        if name.startswith(f"{PACK}.nodes"):
            source = Path(module.__file__).read_text(encoding="utf-8")
            assert "from pixart" not in source and "import pixart" not in source, name


def test_top_level_init_does_only_the_guarded_import():
    """Without ComfyUI the pack's __init__.py defines nothing (ComfyUI-GGUF's pattern); it never edits sys.path."""
    spec = importlib.util.spec_from_file_location("pack_without_comfy", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    path_before = list(sys.path)
    spec.loader.exec_module(module)
    assert sys.path == path_before
    assert not hasattr(module, "comfy_entrypoint") and not hasattr(module, "NODE_CLASS_MAPPINGS")


def test_find_model_refuses_paths_outside_the_folder(nodes, stubs):
    common = nodes.common
    assert common.find_model(["diffusion_models"], "PixArt-Sigma-XL-2-1024-MS/").is_dir()
    (stubs / "secret.pth").write_text("x")
    for name in ("../secret.pth", str(stubs / "secret.pth"), "a/../../secret.pth"):
        with pytest.raises(FileNotFoundError, match="must stay inside their models folder"):
            common.find_model(["diffusion_models"], name)
    with pytest.raises(FileNotFoundError, match="not found in models folders"):
        common.find_model(["diffusion_models"], "missing.pth")


def test_find_model_loads_what_is_symlinked_into_the_folder(nodes, stubs, tmp_path_factory):
    """A file or folder symlinked into models/ (ComfyUI lists it) is found, also when the link points outside."""
    outside = tmp_path_factory.mktemp("elsewhere")
    (outside / "real.safetensors").write_text("x")
    (outside / "pipeline").mkdir()
    (outside / "pipeline" / "model_index.json").write_text("{}")
    os.symlink(outside / "real.safetensors", stubs / "diffusion_models" / "linked.safetensors")
    os.symlink(outside / "pipeline", stubs / "diffusion_models" / "linked_pipeline")
    import folder_paths

    assert "linked.safetensors" in folder_paths.get_filename_list("diffusion_models")
    assert nodes.common.find_model(["diffusion_models"], "linked.safetensors") == outside / "real.safetensors"
    assert "linked_pipeline/" in nodes.common.model_choices(["diffusion_models"])
    assert nodes.common.find_model(["diffusion_models"], "linked_pipeline/") == outside / "pipeline"


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


def fake_model(config, device="cpu"):
    """A stand-in ModelPatcher of a PixArt DiT: what the sampler reads (config, device, dtype, KV, token chunk)."""
    dit = types.SimpleNamespace(config=config, kv_compress=None, token_chunk="auto")
    inner = types.SimpleNamespace(diffusion_model=dit, manual_cast_dtype=None, get_dtype=lambda: torch.float32)
    return types.SimpleNamespace(model=inner, load_device=torch.device(device))


@pytest.fixture
def comfy_ksampler(monkeypatch):
    calls = []
    comfy_nodes = types.ModuleType("nodes")
    comfy_nodes.common_ksampler = lambda *args, **kwargs: calls.append((args, kwargs)) or ("latent",)
    monkeypatch.setitem(sys.modules, "nodes", comfy_nodes)
    return calls


def test_sampler_checks_then_calls_comfy(classes, comfy_ksampler, monkeypatch):
    monkeypatch.setattr(sys.modules["comfy.model_management"], "get_free_memory", lambda device: 1 << 40, raising=False)
    monkeypatch.setattr(sys.modules["comfy.model_management"], "current_loaded_models", [], raising=False)
    model = fake_model(pack_pixart().VARIANTS["sigma-1024"])
    sampler = classes["PixArtSigmaSampler"]
    args = (model, "pos", "neg")
    with pytest.raises(ValueError, match="expected 4 channels"):
        sampler.execute(*args, {"samples": torch.ones(1, 16, 8, 8)}, 1, 20, 4.5, "dpmpp_2m", "sgm_uniform", 1.0)
    assert sampler.execute(*args, {"samples": torch.zeros(1, 16, 8, 8)}, 1, 20, 4.5, "euler", "normal", 1.0).args
    out = sampler.execute(*args, {"samples": torch.zeros(1, 4, 8, 8)}, 1, 20, 4.5, "euler", "normal", 0.5)
    assert out.args == ("latent",) and len(comfy_ksampler) == 2 and comfy_ksampler[1][1] == {"denoise": 0.5}
    for name, cfg, denoise in (("cfg", math.nan, 1.0), ("cfg", math.inf, 1.0), ("denoise", 1.0, math.nan)):
        with pytest.raises(ValueError, match=f"PixArt Sigma Sampler: {name} must be a finite number"):
            sampler.execute(*args, {"samples": torch.zeros(1, 4, 8, 8)}, 1, 20, cfg, "euler", "normal", denoise)
    assert len(comfy_ksampler) == 2


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


def test_sampler_refuses_a_size_that_cannot_fit(classes, comfy_ksampler, monkeypatch):
    """4096 x 4096 px, batch 4, cfg 4.5 with 2 GiB free: refused before sampling, with the numbers and a way out."""
    mm = sys.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "get_free_memory", lambda device: 2 << 30, raising=False)
    monkeypatch.setattr(mm, "current_loaded_models", [], raising=False)
    model = fake_model(pack_pixart().VARIANTS["sigma-2k"])
    latent = {"samples": torch.zeros(4, 4, 512, 512)}
    with pytest.raises(MemoryError) as error:
        classes["PixArtSigmaSampler"].execute(model, "p", "n", latent, 1, 20, 4.5, "euler", "normal", 1.0)
    text = str(error.value)
    assert "4 x 4096x4096 px needs at least" in text and "8 x 65536 tokens" in text and "2.0 GiB are free" in text
    assert "smaller size or batch_size" in text and "KV compression" in text and len(text) < 400
    text.encode("cp1252")
    assert not comfy_ksampler


def test_text_encode_keeps_the_real_tokens(classes):
    class FakeT5:
        device = torch.device("cpu")

        def encode(self, prompts, max_length):
            self.max_length = max_length
            mask = torch.zeros(1, max_length, dtype=torch.long)
            mask[0, :5] = 1
            return torch.arange(max_length * 3, dtype=torch.float32).reshape(1, max_length, 3), mask

    t5 = FakeT5()
    ((cond, extra),) = classes["PixArtSigmaTextEncode"].execute(t5, "a cat", "alpha").args[0]
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
def test_resolution(classes, monkeypatch, base, ratio, size, expected, note):
    monkeypatch.setattr(sys.modules["comfy.model_management"], "get_free_memory", lambda d: 1 << 40, raising=False)
    out = classes["PixArtSigmaResolution"].execute(base, ratio, size[0], size[1], 2)
    latent, width, height, text = out.args
    assert (width, height) == expected and note in text
    assert latent["samples"].shape == (2, 4, height // 8, width // 8)


def test_resolution_refuses_absurd_sizes_before_allocating(classes, monkeypatch):
    """16384 x 16384 px x 4096 images (the inputs' maxima): refused with the numbers, nothing allocated."""
    monkeypatch.setattr(sys.modules["comfy.model_management"], "get_free_memory", lambda d: 64 << 30, raising=False)
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: pytest.fail("allocated"))
    custom = "custom (width x height, snapped)"
    with pytest.raises(MemoryError, match=r"4096 x 16384x16384 px needs 12\d\d\d.\d GiB .* 64.0 GiB are free"):
        classes["PixArtSigmaResolution"].execute("1024", custom, 16384, 16384, 4096)


def test_dtype_and_choice_errors(nodes):
    with pytest.raises(ValueError, match="no float3"):
        nodes.common.torch_dtype("float3")
    with pytest.raises(ValueError, match="'fp7' is not one of"):
        nodes.common.pick({"fp16": 1}, "fp7", "PixArt Sigma DiT Loader weight_dtype")


# the LoRA loader's helpers ----------------------------------------------------------------------------------------


def test_lora_cache_is_bounded_and_follows_the_file(nodes, tmp_path, monkeypatch):
    """No per-instance state: a module-level cache keyed by path and modification time, of a few entries."""
    lora_loader = sys.modules[f"{PACK}.nodes.lora_loader"]
    loads = []
    monkeypatch.setattr(lora_loader, "load_lora", lambda path: loads.append(path) or object())
    lora_loader._parsed_lora.cache_clear()
    path = tmp_path / "a.safetensors"
    path.write_text("x")
    first = lora_loader.cached_lora(path)
    assert lora_loader.cached_lora(path) is first and len(loads) == 1
    os.utime(path, (1, 1))
    assert lora_loader.cached_lora(path) is not first and len(loads) == 2
    assert lora_loader._parsed_lora.cache_info().maxsize == lora_loader.CACHED_LORAS
    assert lora_loader.PEFT_CONFIG == "adapter_config.json"
    lora_loader._parsed_lora.cache_clear()
