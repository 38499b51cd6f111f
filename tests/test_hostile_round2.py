"""Round two of hostile inputs, the readers' side (issue 20, classes 4 and 5): a Hugging Face cache layout of links
loads for the DiT, LoRA and T5 by the listed name; a listed path that is a FIFO, a device, a folder or a dangling link
is named as what it is (never "not found"); a scheduler config that is not a regular file is an error, never taken
as absent; a diffusers DiT whose q / k / v disagree, or whose config.json states a null size, is refused by name.
Every crafted file lives under tmp_path. (Schedules and recipes: test_hostile_schedules.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import threading

import pytest
import torch
from hostile import HINTS, check_refusal, tiny_dit_state
from safetensors.torch import save_file

from pixart import CheckpointError, LoraError, T5Error, load_dit, pipeline_noise_schedule
from pixart.checkpoints.keymap import official_to_diffusers
from pixart.lora import load_lora

LORA = {
    "transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 96),
    "transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(96, 2),
}
HASH = "5f2a9c0e41b7d3a8e6f1c2b9d0a7e3f4c5b6a1d2"  # a blob name as the Hugging Face cache writes it: no suffix


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    import t5_fixtures as fx

    return fx.write_tokenizer_dirs(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def t5_model(tok_dirs):
    import t5_fixtures as fx
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(str(tok_dirs[1]), local_files_only=True)
    return fx.tiny_t5(fx.tiny_config(len(tokenizer)))


def _t5(tok_dirs):
    from pixart.text_encoder import load_t5

    return lambda path: load_t5(path, tokenizer=tok_dirs[1])


def _loaders(tok_dirs):
    return {
        "dit": (lambda p: load_dit(p, variant=HINTS), CheckpointError),
        "lora": (load_lora, LoraError),
        "t5": (_t5(tok_dirs), T5Error),
    }


def _hf_cache(root, name: str, write) -> tuple:
    """``root/snapshots/<rev>/name -> ../../blobs/<hash>``, the blob written by ``write(path)``; (listed, blob)."""
    blob = root / "blobs" / HASH
    blob.parent.mkdir(parents=True)
    write(blob)
    snapshot = root / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    listed = snapshot / name
    os.symlink(os.path.join("..", "..", "blobs", HASH), listed)
    return listed, blob


# ---- class 4: the listed name decides the format -----------------------------------------------------------------


def test_hf_cache_links_load_for_dit_lora_and_t5(tmp_path, tok_dirs, t5_model):
    import t5_fixtures as fx

    dit, _ = _hf_cache(tmp_path / "dit", "tiny.safetensors", lambda p: save_file(tiny_dit_state(), str(p)))
    assert load_dit(dit, variant=HINTS).config.depth == 2
    pth, _ = _hf_cache(tmp_path / "pth", "tiny.pth", lambda p: torch.save(tiny_dit_state(), p))
    assert load_dit(pth, variant=HINTS).config.hidden_size == 96
    lora, _ = _hf_cache(tmp_path / "lora", "style.safetensors", lambda p: save_file(LORA, str(p)))
    loaded = load_lora(lora)
    assert loaded.keys == ["blocks.0.attn.qkv.weight"] and loaded.path == str(lora)
    t5, _ = _hf_cache(tmp_path / "t5", "t5.safetensors", lambda p: fx.write_single_file(p, fx.encoder_state(t5_model)))
    assert _t5(tok_dirs)(t5).model.config.d_model == t5_model.config.d_model


@pytest.mark.parametrize("loader", ["dit", "lora", "t5"])
def test_a_corrupt_blob_is_named_by_its_listed_name(tmp_path, loader, tok_dirs):
    listed, blob = _hf_cache(tmp_path, "picked.safetensors", lambda p: p.write_bytes(b"\x10\x00\x00\x00not a header"))
    call, kind = _loaders(tok_dirs)[loader]
    with pytest.raises(kind) as info:
        call(listed)
    message = check_refusal(info.value, listed, kind)
    assert message.startswith(str(listed)) and "unsupported file type" not in message


# ---- class 4: what a listed path is, when it is not a file -------------------------------------------------------


class _Unblock:
    """Opens the FIFO's write end after a while if a reader is stuck on it, so a regression fails instead of hanging."""

    def __init__(self, fifo):
        self.timer = threading.Timer(20, self._open, (fifo,))

    @staticmethod
    def _open(fifo):
        with contextlib.suppress(OSError):  # no reader: nothing to unblock
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    def __enter__(self):
        self.timer.start()

    def __exit__(self, *exc):
        self.timer.cancel()


@pytest.mark.parametrize("loader", ["dit", "lora", "t5"])
@pytest.mark.parametrize("case", ["fifo", "link-to-fifo", "link-to-device", "dangling-link"])
def test_a_listed_path_that_is_not_a_file_says_what_it_is(tmp_path, loader, case, tok_dirs):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    listed = tmp_path / "model.safetensors"
    if case == "fifo":
        listed = tmp_path / "fifo.safetensors"
        os.mkfifo(listed)
    elif case == "link-to-fifo":
        os.symlink(fifo, listed)
    elif case == "link-to-device":
        os.symlink(os.devnull, listed)
    else:
        os.symlink(tmp_path / "gone" / HASH, listed)
    call, kind = _loaders(tok_dirs)[loader]
    with _Unblock(fifo if case != "fifo" else listed), pytest.raises(kind) as info:
        call(listed)
    message = check_refusal(info.value, listed, kind)
    said = {"fifo": "FIFO", "link-to-fifo": "FIFO", "link-to-device": "character device", "dangling-link": "dangling"}
    assert said[case] in message, message
    assert "no such" not in message and "not found" not in message


def test_a_diffusers_folder_whose_config_or_weights_are_not_files(tmp_path):
    folder = tmp_path / "transformer"
    folder.mkdir()
    os.mkfifo(folder / "config.json")
    with _Unblock(folder / "config.json"):
        message = check_refusal(pytest.raises(CheckpointError, load_dit, folder).value, folder / "config.json")
    assert "FIFO" in message
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel", "sample_size": 16}))
    (folder / "diffusion_pytorch_model.safetensors").mkdir()
    weights = folder / "diffusion_pytorch_model.safetensors"
    assert "found a folder" in check_refusal(pytest.raises(CheckpointError, load_dit, folder).value, weights)


# ---- class 2: a scheduler config that is there is read, never taken as absent ------------------------------------


@pytest.mark.parametrize("case", ["folder", "fifo", "dangling-link", "scheduler-a-file"])
def test_a_scheduler_config_that_is_not_a_regular_file_is_an_error(tmp_path, case):
    root = tmp_path / "pipe"
    (root / "transformer").mkdir(parents=True)
    (root / "transformer" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    config = root / "scheduler" / "scheduler_config.json"
    if case == "scheduler-a-file":
        (root / "scheduler").write_text("{}")
    else:
        (root / "scheduler").mkdir()
    if case == "folder":
        config.mkdir()
    elif case == "fifo":
        os.mkfifo(config)
    elif case == "dangling-link":
        os.symlink(tmp_path / "elsewhere" / "scheduler_config.json", config)
    with _Unblock(config) if case == "fifo" else contextlib.nullcontext():
        error = pytest.raises(CheckpointError, pipeline_noise_schedule, root).value
    message = check_refusal(error, config)
    assert "scheduler_config.json" in message


# ---- class 5: diffusers files refused by name, not by torch ------------------------------------------------------


@pytest.mark.parametrize("part", ["attn1.to_k", "attn1.to_v", "attn2.to_v"])
def test_q_k_v_that_disagree_name_the_file_and_keys(tmp_path, part):
    tensors = official_to_diffusers(tiny_dit_state())
    key = f"transformer_blocks.1.{part}.weight"
    tensors[key] = torch.zeros(48, tensors[key].shape[1])
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    message = check_refusal(pytest.raises(CheckpointError, load_dit, path, variant=HINTS).value, path)
    assert key in message and "(48, 96)" in message and "(96, 96)" in message
    assert "Sizes of tensors" not in message


@pytest.mark.parametrize("field", ["sample_size", "num_attention_heads"])
def test_a_null_size_in_config_json_is_refused_not_guessed(tmp_path, field):
    config = {"_class_name": "PixArtTransformer2DModel", "num_attention_heads": 3, "sample_size": 16, field: None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(official_to_diffusers(tiny_dit_state()), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    message = check_refusal(pytest.raises(CheckpointError, load_dit, tmp_path).value, tmp_path / "config.json")
    assert field in message and "null" in message
    config[field] = "16"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert field in check_refusal(pytest.raises(CheckpointError, load_dit, tmp_path).value, tmp_path / "config.json")
