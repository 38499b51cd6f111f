"""PixArt ControlNet readers: official .pth / safetensors (bare, or a whole ControlPixArtHalf with the base model
inside), the diffusers research-project adapter layout (bare, or inside PixArtControlNetTransformerModel), and bad
files refused with CheckpointErrors naming the file and key, expected and found."""

from __future__ import annotations

import pytest
import torch
from dit_fixtures import official_state_dict, reference_model, tiny_config
from safetensors.torch import save_file

from pixart import CheckpointError
from pixart.controlnet import load_controlnet, read_controlnet
from scripts.tiny_controlnet import adapter_state_dict, controlnet_state_dict, whole_model

CONFIG = tiny_config(depth=4)
HEADS = CONFIG.num_heads


@pytest.fixture(scope="module")
def base():
    return official_state_dict(reference_model(CONFIG), CONFIG)


@pytest.fixture(scope="module")
def official(base):
    return controlnet_state_dict(base, copies=3, seed=1)


def _save(path, state):
    if path.suffix == ".safetensors":
        save_file({k: v.clone().contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _same(read, official):
    assert read.keys() == official.keys()
    for key, tensor in official.items():
        assert torch.equal(read[key], tensor), key


@pytest.mark.parametrize(
    "layout, name, wrap",
    [
        ("official", "cn.pth", None),
        ("official", "cn-wrapped.pth", "state_dict"),
        ("official", "cn.safetensors", None),
        ("whole", "whole.pth", "state_dict"),
        ("whole", "whole.safetensors", None),
        ("adapter", "adapter.safetensors", None),
        ("adapter-whole", "adapter-whole.safetensors", None),
    ],
)
def test_every_layout_reads_to_the_official_keys(tmp_path, base, official, layout, name, wrap, caplog):
    state = {
        "official": official,
        "whole": whole_model(official, base),
        "adapter": adapter_state_dict(official),
        "adapter-whole": whole_model(
            {"controlnet." + k: v for k, v in adapter_state_dict(official).items()}, base, "transformer."
        ),
    }[layout]
    path = _save(tmp_path / name, {wrap: state} if wrap else state)
    with caplog.at_level("INFO"):
        read, config = read_controlnet(path, num_heads=HEADS)
    _same(read, official)
    assert (config.copies, config.hidden_size, config.num_heads, config.mlp_ratio) == (3, 96, 3, 4.0)
    if layout.endswith("whole"):
        assert f"{len(base)} base-model tensors in the file are not used" in caplog.text


def test_a_diffusers_folder_reads_its_weights_file(tmp_path, official):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "PixArtControlNetAdapterModel", "num_layers": 3}')
    with pytest.raises(CheckpointError, match="adapter: a folder without ControlNet weights"):
        read_controlnet(folder, num_heads=HEADS)
    _save(folder / "diffusion_pytorch_model.safetensors", adapter_state_dict(official))
    _same(read_controlnet(folder, num_heads=HEADS)[0], official)


def test_load_controlnet_builds_the_model(tmp_path, official):
    model = load_controlnet(_save(tmp_path / "cn.safetensors", official), num_heads=HEADS, dtype=torch.float16)
    assert model.config.copies == 3 and not model.training
    state = model.state_dict()
    assert state["controlnet.2.after_proj.weight"].dtype == torch.float16
    assert torch.equal(
        state["controlnet.1.copied_block.attn.qkv.weight"], official["controlnet.1.copied_block.attn.qkv.weight"].half()
    )


def test_heads_default_to_width_over_72(tmp_path, official):
    with pytest.raises(CheckpointError, match=r"cn.pth: cannot tell the attention heads of a 96-wide ControlNet"):
        read_controlnet(_save(tmp_path / "cn.pth", official))


def test_trained_kv_convolutions_are_read(tmp_path, official):
    state = dict(official)
    state["controlnet.1.copied_block.attn.sr.weight"] = torch.randn(96, 1, 2, 2)
    state["controlnet.1.copied_block.attn.sr.bias"] = torch.randn(96)
    state["controlnet.1.copied_block.attn.norm.weight"] = torch.randn(96)
    state["controlnet.1.copied_block.attn.norm.bias"] = torch.randn(96)
    _, config = read_controlnet(_save(tmp_path / "kv.pth", state), num_heads=HEADS)
    assert (config.conv_kv_layers, config.conv_kv_factor) == ((1,), 2)


def _without(state, *keys):
    return {k: v for k, v in state.items() if k not in keys}


BAD = {
    "no-after-proj": (
        lambda s, b: _without(s, "controlnet.0.after_proj.weight"),
        r"no 'controlnet.0.after_proj.weight'; a ControlNet's copy 0 needs after_proj \(C, C\)",
    ),
    "no-before-proj": (
        lambda s, b: _without(s, "controlnet.0.before_proj.weight", "controlnet.0.before_proj.bias"),
        r"missing 2: \['controlnet.0.before_proj.bias', 'controlnet.0.before_proj.weight'\]",
    ),
    "before-proj-on-copy-1": (
        lambda s, b: {**s, "controlnet.1.before_proj.weight": torch.zeros(96, 96)},
        r"unexpected 1: \['controlnet.1.before_proj.weight'\]",
    ),
    "wrong-shape": (
        lambda s, b: {**s, "controlnet.2.after_proj.weight": torch.zeros(96, 48)},
        r"controlnet.2.after_proj.weight is \(96, 48\), expected \(96, 96\)",
    ),
    "gap": (
        lambda s, b: {k: v for k, v in s.items() if not k.startswith("controlnet.1.")},
        r"has ControlNet copies 0..2 but none of \[1\]",
    ),
    "stranger": (
        lambda s, b: {**s, "controlnet.0.copied_block.attn.extra": torch.zeros(1)},
        r"unexpected 1: \['controlnet.0.copied_block.attn.extra'\]",
    ),
    "foreign-key": (
        lambda s, b: {**s, "lora_unet_x.weight": torch.zeros(1)},
        r"1 tensors are not PixArt ControlNet weights: \['lora_unet_x.weight'\]",
    ),
    "integer": (
        lambda s, b: {**s, "controlnet.0.after_proj.bias": torch.zeros(96, dtype=torch.int64)},
        r"not floating point: \['controlnet.0.after_proj.bias'\]",
    ),
    "mixed-layouts": (
        lambda s, b: {**s, **adapter_state_dict(s)},
        "mixes the official 'controlnet.' and the diffusers 'controlnet_blocks.' layouts",
    ),
    "a-dit": (
        lambda s, b: b,
        "not a PixArt ControlNet: .*it looks like a PixArt transformer",
    ),
    "base-only": (
        lambda s, b: whole_model({}, b),
        r"not a PixArt ControlNet: no 'controlnet.\{i\}.copied_block.\*'",
    ),
    "adapter-stranger": (
        lambda s, b: {**adapter_state_dict(s), "controlnet_blocks.0.transformer_block.norm9.weight": torch.zeros(96)},
        r"controlnet_blocks.0.transformer_block holds tensors that are not PixArt block weights: "
        r"\['transformer_blocks.0.norm9.weight'\]",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_are_refused_naming_file_and_key(tmp_path, official, base, case):
    make, message = BAD[case]
    path = _save(tmp_path / f"{case}.safetensors", make(official, base))
    with pytest.raises(CheckpointError, match=rf"{case}.safetensors: .*{message}"):
        read_controlnet(path, num_heads=HEADS)


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable PyTorch checkpoint"):
        read_controlnet(junk)
    with pytest.raises(CheckpointError, match="nothing.pth: no such ControlNet file or folder"):
        read_controlnet(tmp_path / "nothing.pth")
    pickled = tmp_path / "pickled.pth"
    torch.save({"controlnet.0.after_proj.weight": torch.zeros(2, 2), "config": {"depth": 2}}, pickled)
    with pytest.raises(CheckpointError, match="pickled.pth: expected a flat dict of tensors"):
        read_controlnet(pickled)
