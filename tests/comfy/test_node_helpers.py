"""The nodes' own logic in the session's ComfyUI (marker ``comfy``): model lookup inside the models folders (symlinks
included), caption padding, latent checks, the sampler's checks before it calls ComfyUI's sampling, the memory
estimate and the refusals it drives, text encoding, resolutions, and the LoRA loader's cache. ComfyUI's sampling and
free-memory answers are replaced (``monkeypatch``) where a check needs a given answer."""

from __future__ import annotations

import math
import os
import types

import pytest
import torch
from node_calls import add_model_folder

import pixart

pytestmark = pytest.mark.comfy


@pytest.fixture
def stubs(monkeypatch, tmp_path):
    """A models folder that ComfyUI lists first for this test, with a diffusers pipeline folder in it."""
    (tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS" / "transformer").mkdir(parents=True)
    (tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS" / "model_index.json").write_text("{}")
    (tmp_path / "diffusion_models" / "PixArt-Sigma-XL-2-1024-MS" / "transformer" / "model.safetensors").write_text("")
    add_model_folder(monkeypatch, "diffusion_models", tmp_path / "diffusion_models")
    return tmp_path


@pytest.fixture
def nodes(comfyui):
    """The pack's nodes package, as ComfyUI imported it."""
    return comfyui.module("nodes")


@pytest.fixture
def classes(nodes):
    return {node.define_schema().node_id: node for node in nodes.NODES}


@pytest.fixture
def mm(comfyui):
    import comfy.model_management

    return comfy.model_management


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
    models = stubs / "diffusion_models"
    found = nodes.common.find_model(["diffusion_models"], "linked.safetensors")
    assert found == models / "linked.safetensors" and found.resolve() == outside / "real.safetensors"
    assert "linked_pipeline/" in nodes.common.model_choices(["diffusion_models"])
    found = nodes.common.find_model(["diffusion_models"], "linked_pipeline/")
    assert found == models / "linked_pipeline" and found.resolve() == outside / "pipeline"


def test_find_model_keeps_the_listed_name_and_says_what_is_not_a_file(nodes, stubs, pack_pixart):
    """A Hugging Face cache layout (snapshots/<rev>/x.safetensors -> ../../blobs/<hash>) is found under its listed
    name, not the blob's; a FIFO, a dangling link or a file where a folder is asked for is named with what it is,
    in the loader's error kind, never "not found ... put it there"."""
    models = stubs / "diffusion_models"
    snapshot = models / "hub" / "snapshots" / "0123abc"
    (models / "hub" / "blobs").mkdir(parents=True)
    (models / "hub" / "blobs" / "9f86d081").write_text("x")
    snapshot.mkdir(parents=True)
    os.symlink("../../blobs/9f86d081", snapshot / "model.safetensors")
    found = nodes.common.find_model(["diffusion_models"], "hub/snapshots/0123abc/model.safetensors")
    assert found == snapshot / "model.safetensors" and found.suffix == ".safetensors"
    os.mkfifo(models / "pipe.safetensors")
    os.symlink(models / "gone.pth", models / "dangling.pth")
    (models / "plain.pth").write_text("x")
    cases = {
        "pipe.safetensors": "expected a model file, found a FIFO (named pipe)",
        "dangling.pth": "expected a model file, found a dangling link to",
        "plain.pth/": "expected a model folder, found a regular file",
    }
    for name, expected in cases.items():
        with pytest.raises(pack_pixart.CheckpointError) as error:
            nodes.common.find_model(["diffusion_models"], name, pack_pixart.CheckpointError)
        text = str(error.value)
        assert str(models / name.rstrip("/")) in text and expected in text and "put it there" not in text, text


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
def comfy_ksampler(comfyui, monkeypatch):
    """ComfyUI's ``common_ksampler`` replaced by a recorder of its calls that returns ("latent",)."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    calls = []
    monkeypatch.setattr(comfy_nodes, "common_ksampler", lambda *a, **k: calls.append((a, k)) or ("latent",))
    return calls


@pytest.fixture
def pack_pixart(comfyui):
    """The pack's own pixart package (``<pack>.pixart``), which the nodes import relatively."""
    return comfyui.module("pixart")


def test_sampler_checks_then_calls_comfy(classes, comfy_ksampler, monkeypatch, mm, pack_pixart):
    monkeypatch.setattr(mm, "get_free_memory", lambda device: 1 << 40, raising=False)
    monkeypatch.setattr(mm, "current_loaded_models", [], raising=False)
    model = fake_model(pack_pixart.VARIANTS["sigma-1024"])
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


def test_sampler_refuses_a_size_that_cannot_fit(classes, monkeypatch, mm, pack_pixart, comfyui, models):
    """4096 x 4096 px, batch 4, cfg 4.5 with 2 GiB free: the MODEL's check refuses it in PixArt Sigma Sampler before
    sampling allocates, with the numbers and a way out. One model call holds the batch once (ComfyUI runs prompt
    and negative apart when memory is short), so 4 x 65536 tokens."""
    monkeypatch.setattr(mm, "get_free_memory", lambda *args, **kwargs: 2 << 30)
    monkeypatch.setattr(mm, "current_loaded_models", [])
    loader = classes["PixArtSigmaDiTLoader"]
    model = loader.execute("PixArt-Sigma-XL-2-1024-MS.pth", "auto", "bf16", "off", 2, "auto").result[0]
    latent = {"samples": torch.zeros(4, 4, 512, 512)}
    cond = [[torch.zeros(1, 3, 4096), {"attention_mask": torch.ones(1, 3)}]]
    with pytest.raises(pack_pixart.SizeError) as error:
        classes["PixArtSigmaSampler"].execute(model, cond, cond, latent, 1, 20, 4.5, "euler", "normal", 1.0)
    text = str(error.value)
    assert isinstance(error.value, MemoryError)
    assert "4 x 4096x4096 px needs at least" in text and "4 x 65536 tokens" in text and "2.0 GiB are free" in text
    assert "smaller size or batch_size" in text and "KV compression" in text and len(text) < 400, text
    text.encode("cp1252")


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
def test_resolution(classes, monkeypatch, mm, base, ratio, size, expected, note):
    monkeypatch.setattr(mm, "get_free_memory", lambda d: 1 << 40, raising=False)
    out = classes["PixArtSigmaResolution"].execute(base, ratio, size[0], size[1], 2)
    latent, width, height, text = out.args
    assert (width, height) == expected and note in text
    assert latent["samples"].shape == (2, 4, height // 8, width // 8)


def test_resolution_refuses_absurd_sizes_before_allocating(classes, monkeypatch, mm):
    """16384 x 16384 px x 4096 images (the inputs' maxima): refused with the numbers, nothing allocated."""
    monkeypatch.setattr(mm, "get_free_memory", lambda d: 64 << 30, raising=False)
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


def test_lora_cache_is_bounded_and_follows_the_file(comfyui, tmp_path, monkeypatch):
    """No per-instance state: a module-level cache keyed by path and modification time, of a few entries."""
    lora_loader = comfyui.module("nodes.lora_loader")
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
