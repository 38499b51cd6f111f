"""Every checkpoint format loads to the same model; every bad input gives an error naming the file and the problem."""

import json

import pytest
import torch
from dit_fixtures import (
    inputs,
    official_state_dict,
    reference_forward,
    reference_model,
    tiny_config,
    write_diffusers_folder,
    write_official_pth,
    write_safetensors,
)
from safetensors.torch import save_file

from pixart import CheckpointError, KVCompress, load_dit, read_checkpoint
from pixart.attention import sdpa_attention
from pixart.checkpoints.keymap import official_to_diffusers

pytest.importorskip("diffusers")

HINTS = {"num_heads": 3}  # a 96-wide model: heads cannot be read off shapes


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config()
    reference = reference_model(config)
    return config, reference, official_state_dict(reference, config)


def _write(kind: str, tmp_path, tiny):
    config, reference, official = tiny
    plain = {k: v for k, v in official.items() if k not in ("pos_embed", "y_embedder.y_embedding")}
    if kind == "pth-state_dict":
        return write_official_pth(tmp_path / "m.pth", official)
    if kind == "pth-ema":
        torch.save(
            {"state_dict": {k: v * 0 for k, v in official.items()}, "state_dict_ema": official}, tmp_path / "e.pth"
        )
        return tmp_path / "e.pth"
    if kind == "pth-plain":
        return write_official_pth(tmp_path / "p.pt", official, wrapper=None)
    if kind == "safetensors-official":
        return write_safetensors(tmp_path / "o.safetensors", official)
    if kind == "sft-official":
        return write_safetensors(tmp_path / "o.sft", official)
    if kind == "safetensors-comfyui":
        path = write_safetensors(tmp_path / "c.safetensors", official, prefix="model.diffusion_model.")
        extra = {"first_stage_model.decoder.conv_in.weight": torch.zeros(3, 3)}
        tensors = {**{"model.diffusion_model." + k: v for k, v in official.items()}, **extra}
        save_file(tensors, str(path))
        return path
    if kind == "safetensors-diffusers":
        return write_safetensors(tmp_path / "d.safetensors", official_to_diffusers(plain))
    if kind == "safetensors-diffusers-prefixed":
        return write_safetensors(tmp_path / "t.safetensors", official_to_diffusers(plain), prefix="transformer.")
    if kind == "diffusers-folder":
        return write_diffusers_folder(tmp_path / "folder", reference)
    if kind == "diffusers-sharded":
        return write_diffusers_folder(tmp_path / "sharded", reference, max_shard_size="200KB")
    if kind == "diffusers-pipeline":
        return write_diffusers_folder(tmp_path / "pipe", reference, family="sigma")
    raise AssertionError(kind)


FORMATS = [
    "pth-state_dict",
    "pth-ema",
    "pth-plain",
    "safetensors-official",
    "sft-official",
    "safetensors-comfyui",
    "safetensors-diffusers",
    "safetensors-diffusers-prefixed",
    "diffusers-folder",
    "diffusers-sharded",
    "diffusers-pipeline",
]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_loads_and_matches_reference(kind, tmp_path, tiny):
    config, reference, _ = tiny
    path = _write(kind, tmp_path, tiny)
    if kind == "diffusers-sharded":
        assert len(list(path.glob("*.safetensors"))) > 1
    model = load_dit(path, variant={"num_heads": 3, "sample_size": 16, "pe_interpolation": 1.0})
    assert model.config == config
    x, t, y, mask = inputs(config, 32, 48)
    with torch.no_grad():
        got = model(x, t, y, mask)
    expected = reference_forward(reference, x, t, y, mask)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("kind", ["pth-state_dict", "diffusers-folder", "diffusers-pipeline"])
def test_detection_reads_the_file_alone(kind, tmp_path, tiny):
    """Official files carry the position table and null caption; diffusers folders carry config.json."""
    config, _, _ = tiny
    variant = {} if kind.startswith("diffusers") else HINTS
    _, detected = read_checkpoint(_write(kind, tmp_path, tiny), variant=variant or "auto")
    assert detected == config


def test_key_round_trip_official_diffusers_official(tiny):
    _, reference, official = tiny
    ours = {k: v for k, v in official.items() if k not in ("pos_embed", "y_embedder.y_embedding")}
    there = official_to_diffusers(ours)
    assert set(there) == set(reference.state_dict())
    assert all(torch.equal(there[k], v) for k, v in reference.state_dict().items())
    from pixart.checkpoints.keymap import diffusers_to_official

    back, unknown = diffusers_to_official(there)
    assert not unknown and set(back) == set(ours)
    assert all(torch.equal(back[k], v) for k, v in ours.items())


def test_dtypes_load(tmp_path, tiny):
    config, reference, official = tiny
    path = write_safetensors(tmp_path / "o.safetensors", official)
    x, t, y, mask = inputs(config, 32, 32)
    expected = reference_forward(reference, x, t, y, mask)
    for dtype, tol in ((torch.bfloat16, 5e-2), (torch.float16, 5e-3)):
        model = load_dit(path, variant=HINTS, dtype=dtype)
        assert all(p.dtype == dtype for p in model.parameters())
        with torch.no_grad():
            got = model(x, t, y, mask)
        assert got.dtype == torch.float32
        assert (got - expected).abs().max() <= tol * expected.abs().max()


# ---- bad inputs ----


def test_truncated_safetensors(tmp_path, tiny):
    path = write_safetensors(tmp_path / "cut.safetensors", tiny[2])
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: not a readable safetensors file"):
        load_dit(path)


def test_truncated_pth(tmp_path, tiny):
    path = write_official_pth(tmp_path / "cut.pth", tiny[2])
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable PyTorch checkpoint"):
        load_dit(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth: not a readable PyTorch checkpoint"):
        load_dit(path)
    other = tmp_path / "image.png"
    other.write_bytes(b"\x89PNG")
    with pytest.raises(CheckpointError, match=r"unsupported file type '\.png'"):
        load_dit(other)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_dit(tmp_path / "missing.safetensors")


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "cfg": object()}, path)
    with pytest.raises(CheckpointError, match="evil.pth: not a readable PyTorch checkpoint") as info:
        load_dit(path)
    assert "holds a pickled object (" in str(info.value) and "weights_only" not in str(info.value)


def test_sd15_unet_is_named(tmp_path):
    unet = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        "model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3),
    }
    path = write_safetensors(tmp_path / "sd15.safetensors", unet)
    with pytest.raises(
        CheckpointError,
        match=r"sd15\.safetensors: not a PixArt transformer checkpoint; it looks like a Stable Diffusion UNet",
    ):
        load_dit(path)


def test_missing_unexpected_and_wrong_shape_are_listed(tmp_path, tiny):
    official = dict(tiny[2])
    del official["blocks.1.mlp.fc2.bias"]
    official["blocks.0.attn.extra.weight"] = torch.zeros(2)
    official["blocks.0.cross_attn.proj.weight"] = torch.zeros(96, 95)
    path = write_safetensors(tmp_path / "broken.safetensors", official)
    with pytest.raises(CheckpointError) as info:
        load_dit(path, variant=HINTS)
    message = str(info.value)
    assert "broken.safetensors" in message
    assert "missing 1: ['blocks.1.mlp.fc2.bias']" in message
    assert "unexpected 1: ['blocks.0.attn.extra.weight']" in message
    assert "blocks.0.cross_attn.proj.weight is (96, 95), expected (96, 96)" in message


def test_diffusers_folder_errors(tmp_path, tiny):
    folder = write_diffusers_folder(tmp_path / "f", tiny[1])
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model.safetensors"):
        load_dit(folder)
    config = json.loads((folder / "config.json").read_text())
    config["_class_name"] = "UNet2DConditionModel"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="_class_name is 'UNet2DConditionModel'"):
        load_dit(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="needs config.json"):
        load_dit(empty)


def test_variant_errors(tmp_path, tiny):
    path = write_safetensors(tmp_path / "o.safetensors", tiny[2])
    with pytest.raises(CheckpointError, match="unknown variant 'sigma-4k'"):
        load_dit(path, variant="sigma-4k")
    with pytest.raises(CheckpointError, match="hidden_size: asked 1152, file has 96"):
        load_dit(path, variant="sigma-1024")
    with pytest.raises(CheckpointError, match="unknown hyperparameters \\['heads'\\]"):
        load_dit(path, variant={"heads": 3})
    with pytest.raises(CheckpointError, match="cannot tell the number of attention heads"):
        load_dit(path)


def test_conv_compression_needs_trained_weights(tmp_path, tiny):
    path = write_safetensors(tmp_path / "o.safetensors", tiny[2])
    with pytest.raises(ValueError, match="needs a checkpoint with trained KV-compression weights"):
        load_dit(path, variant=HINTS, kv_compress=KVCompress("conv", 2))


def test_load_dit_options_reach_the_model(tmp_path, tiny):
    config, _, state_dict = tiny
    path = write_safetensors(tmp_path / "tiny.safetensors", state_dict)
    kv = KVCompress("avgpool", 2, layers=(1,))
    model = load_dit(path, variant=HINTS, kv_compress=kv, attention_chunk=5, token_chunk=7, torch_compile=True)
    plain = load_dit(path, variant=HINTS, kv_compress=kv)
    assert [block.attn.kv_compress for block in model.blocks] == [None, kv]
    assert (model.token_chunk, plain.token_chunk) == (7, "auto")
    assert plain.blocks[0].attn.attention is sdpa_attention
    assert model.blocks[0].attn.attention is not sdpa_attention  # the query-chunked wrapper
    assert model._compiled_call_impl is not None and plain._compiled_call_impl is None  # compiled at the first call
    x, t, y, mask = inputs(config, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(model._call_impl(x, t, y, mask), plain(x, t, y, mask), rtol=1e-6, atol=1e-6)
