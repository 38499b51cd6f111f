"""PixArt Sigma LoRA Loader's helpers in the session's ComfyUI (marker ``comfy``): the names it lists (files and PEFT
adapter folders) and finds, and the LoRA it hands ComfyUI's ``comfy.lora.load_lora``.

The LoRA files are written by hand (tests/lora_fixtures.py, no PEFT needed): random rank-4 LoRAs (alpha 8, so scale 2)
of every module of a tiny DiT, ``ff.net.2`` at rank 2 (scale 4) and ``attn2.to_k`` with alpha 2 (scale 0.5), as a
PEFT adapter folder (with those patterns in its config), the PEFT folder the official script saves
(``checkpoint-100/``), kohya and old-diffusers namings."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from dit_fixtures import tiny_config
from lora_fixtures import random_lora, write_adapter_folder, write_kohya, write_old_diffusers

from pixart import PixArtTransformer

pytestmark = pytest.mark.comfy
R, ALPHA = 4, 8
RANK_PATTERN, ALPHA_PATTERN = {"ff.net.2": 2}, {"attn2.to_k": 2}


def modules(state: dict) -> list[str]:
    return [k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """{"peft-folder", "official-script", "kohya", "old-lora-down-up": path} in one folder."""
    folder = tmp_path_factory.mktemp("loras")
    torch.manual_seed(0)
    state = random_lora(PixArtTransformer(tiny_config()).state_dict(), rank=R, seed=3)
    g = torch.Generator().manual_seed(4)
    scales = {}
    for module in modules(state):
        down, up = state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"]
        rank = RANK_PATTERN["ff.net.2"] if module.endswith("ff.net.2") else R
        alpha = ALPHA_PATTERN["attn2.to_k"] if module.endswith("attn2.to_k") else ALPHA
        if rank != R:
            state[f"{module}.lora_A.weight"] = torch.randn(rank, *down.shape[1:], generator=g) * 0.05
            state[f"{module}.lora_B.weight"] = torch.randn(up.shape[0], rank, *up.shape[2:], generator=g) * 0.05
        scales[module] = alpha / rank
    peft = write_adapter_folder(state, r=R, lora_alpha=ALPHA, folder=folder / "peft_adapter")
    settings = json.loads((peft / "adapter_config.json").read_text())
    settings.update(rank_pattern=RANK_PATTERN, alpha_pattern=ALPHA_PATTERN)
    (peft / "adapter_config.json").write_text(json.dumps(settings))
    shutil.copytree(peft, folder / "checkpoint-100")  # the official script saves a PEFT folder too
    return {
        "peft-folder": peft,
        "official-script": folder / "checkpoint-100",
        "kohya": write_kohya(state, scales, folder / "kohya.safetensors"),
        "old-lora-down-up": write_old_diffusers(state, scales, folder / "old.bin"),
    }


def test_node_lists_files_and_peft_folders(comfyui, files):
    node = comfyui.module("nodes.lora_loader")
    find_lora, lora_choices, peft_folders = node.find_lora, node.lora_choices, node.peft_folders

    base = files["kohya"].parent
    assert peft_folders(base) == ["checkpoint-100/", "peft_adapter/"]
    names = lora_choices(["kohya.safetensors", "old.bin"], [base, base / "missing"])
    assert names == ["checkpoint-100/", "kohya.safetensors", "old.bin", "peft_adapter/"]
    assert find_lora("peft_adapter/", [base / "missing", base]) == files["peft-folder"].resolve()
    assert find_lora("kohya.safetensors", [base]) == files["kohya"].resolve()
    with pytest.raises(node.LoraError, match="not found"):  # the pack's own pixart.lora.LoraError
        find_lora("../loras/kohya.safetensors", [base / "peft_adapter"])


def test_node_patches_use_row_offsets_into_fused_weights(comfyui, files):
    """What the node hands ComfyUI's ``comfy.lora.load_lora``: keys under ``diffusion_model.``,
    ``(key, (0, start, rows))`` for q/k/v and k/v, and LoRA parts ``lora_up.weight`` / ``lora_down.weight`` /
    ``alpha`` with alpha / r = scale (ComfyUI divides alpha by the rank)."""
    node = comfyui.module("nodes.lora_loader")
    tensors, key_map = node.comfy_lora(comfyui.module("pixart.lora").load_lora(files["peft-folder"]))
    assert len(key_map) == 27 and len(tensors) == 3 * 27
    names = {key: name for name, key in key_map.items()}

    def parts(key):
        name = names[key]
        return tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"], float(tensors[f"{name}.alpha"])

    up, down, alpha = parts(("diffusion_model.blocks.1.attn.qkv.weight", (0, 192, 96)))
    assert up.shape == (96, 4) and down.shape == (4, 96) and alpha == 8.0
    kv = "diffusion_model.blocks.0.cross_attn.kv_linear.weight"
    assert parts((kv, (0, 0, 96)))[2] == 2.0 and parts((kv, (0, 96, 96)))[2] == 8.0  # k: alpha_pattern 2
    assert parts("diffusion_model.blocks.0.mlp.fc2.weight")[2] == 8.0  # rank 2, scale 4
    assert parts("diffusion_model.x_embedder.proj.weight")[1].shape == (4, 16)  # conv kernel flattened
