"""The LoRA loader's file handling, in the session's ComfyUI (marker ``comfy``): the parsed-LoRA cache follows the
content (a file replaced keeping its modification time is read again), unreadable entries are the pack's LoraError
naming the listed file, and the search for PEFT adapter folders is bounded in depth and follows each linked folder
once (a link loop ends)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

LORA = "transformer_blocks.0.attn1.to_q.lora_{}.weight"


pytestmark = pytest.mark.comfy


@pytest.fixture
def node(comfyui):
    module = comfyui.module("nodes.lora_loader")
    module._parsed_lora.cache_clear()
    yield module
    module._parsed_lora.cache_clear()


def _lora(path, value: float):
    save_file({LORA.format("A"): torch.full((2, 96), value), LORA.format("B"): torch.ones(96, 2)}, str(path))
    return path


def _replace_keeping_mtime(path, source):
    """What ``cp -p`` / rsync -a / unzip leave: new content, the old modification time."""
    before = os.stat(path)
    shutil.copyfile(source, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns


def test_file_replaced_keeping_its_mtime_is_read_again(node, tmp_path):
    path = _lora(tmp_path / "style.safetensors", 1.0)
    first = node.cached_lora(path)
    assert node.cached_lora(path) is first  # unchanged: from the cache
    _replace_keeping_mtime(path, _lora(tmp_path / "other.safetensors", 2.0))  # same size, other values
    again = node.cached_lora(path)
    assert again is not first and float(again.targets[0].down[0, 0]) == 2.0


def test_peft_folder_replaced_keeping_mtimes_is_read_again(node, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    config = '{"peft_type": "LORA", "r": 2, "lora_alpha": %d}'
    (folder / "adapter_config.json").write_text(config % 2)
    save_file({f"base_model.model.{LORA.format(x)}": torch.ones(*s) for x, s in (("A", (2, 96)), ("B", (96, 2)))},
              str(folder / "adapter_model.safetensors"))  # fmt: skip
    first = node.cached_lora(folder)
    (tmp_path / "new.json").write_text(config % 4)
    _replace_keeping_mtime(folder / "adapter_config.json", tmp_path / "new.json")
    assert node.cached_lora(folder).targets[0].scale == 2.0 != first.targets[0].scale


def test_dangling_link_in_an_adapter_folder_is_our_error(node, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 2}')
    (folder / "adapter_model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    (folder / "notes").symlink_to(tmp_path / "also-gone")  # entries the loader does not read are not looked at
    with pytest.raises(node.LoraError) as info:
        node.cached_lora(folder)
    assert f"{folder / 'adapter_model.safetensors'}: a link to nothing" in str(info.value)
    single = tmp_path / "single.safetensors"
    single.symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(node.LoraError, match="single.safetensors: a link to nothing"):
        node.file_stamp(single)


def _adapter(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"")


def test_adapter_search_is_bounded_and_ends_link_loops(node, tmp_path, caplog):
    base = tmp_path / "loras"
    _adapter(base / "a" / "b")
    deep = base.joinpath(*[f"d{i}" for i in range(node.MAX_DEPTH + 2)])
    _adapter(deep)
    (base / "a" / "loop").symlink_to(base, target_is_directory=True)  # a/loop/a/loop/... without end
    (base / "alias").symlink_to(base / "a", target_is_directory=True)  # the same folder under a second name
    found = node.peft_folders(base)
    assert found in (["a/b/"], ["alias/b/"])  # each real folder once, the deep one not reached
    assert f"more than {node.MAX_DEPTH} levels down" in caplog.text


def test_adapter_search_stops_after_its_folder_budget(node, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(node, "MAX_FOLDERS", 5)
    for i in range(10):
        (tmp_path / f"f{i}").mkdir()
    _adapter(tmp_path / "z")
    assert node.peft_folders(tmp_path) == []
    assert "stopped looking for PEFT adapter folders after 5 folders" in caplog.text
