"""Saving what a run trained, in the forms people load: never over an existing file.

* ``save_lora_file``: one ``.safetensors`` with ``diffusion_model.<official module>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha`` for each adapted Linear. ComfyUI's LoraLoaderModelOnly maps
  ``diffusion_model.<module>`` to that module's weight for any model (comfy/lora.py ``model_lora_keys_unet``), and
  ``pixart.lora`` reads the same names. Fused weights (``attn.qkv``, ``cross_attn.kv_linear``) get one LoRA of rank
  k r: the pairs' A stacked, their B block-diagonal, alpha = (alpha / r) k r, which is the same update.
* ``save_peft_folder``: ``adapter_config.json`` + ``adapter_model.safetensors`` with diffusers module names
  (``base_model.model.transformer_blocks.N.attn1.to_q.lora_A.weight``), what ``PeftModel.from_pretrained`` loads
  onto diffusers' ``PixArtTransformer2DModel``.
* ``save_full_official``: the whole transformer with official keys plus the base-resolution position table
  ``pos_embed`` official files carry (so loaders can tell the base resolution and scale).
* ``save_full_diffusers``: a diffusers ``transformer/`` folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor, nn

from ..checkpoints.keymap import DIFFUSION_MODEL_PREFIX, diffusers_config, official_to_diffusers
from ..embeddings import sincos_2d
from ..lora.files import PEFT_CONFIG, PEFT_WEIGHTS
from .lora import LoraAdapter
from .settings import TrainingError

PEFT_PREFIX = "base_model.model."
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMER_CLASS = "PixArtTransformer2DModel"


class OutputExistsError(TrainingError):
    """A save would overwrite an existing file; the message names it."""


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``; OutputExistsError if it exists (checked by the exclusive create itself)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "xb") as f:
            f.write(data)
    except FileExistsError as e:
        raise OutputExistsError(f"{path}: already exists; choose another name (training never overwrites)") from e


def _refuse_existing(paths: list[Path]) -> None:
    """OutputExistsError naming the first of ``paths`` that exists (before any of a set of files is written)."""
    for path in paths:
        if path.exists():
            raise OutputExistsError(f"{path}: already exists; choose another name (training never overwrites)")


def _safetensors(tensors: Mapping[str, Tensor], dtype: torch.dtype | None, suffix_kept: str | None = None) -> bytes:
    """safetensors bytes of ``tensors``, floating ones cast to ``dtype`` (when given) except names ending in
    ``suffix_kept``."""

    def cast(key: str, value: Tensor) -> Tensor:
        keep = dtype is None or not value.is_floating_point() or (suffix_kept and key.endswith(suffix_kept))
        return value if keep else value.to(dtype)

    return save({k: cast(k, v).detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})


def lora_file_tensors(lora: LoraAdapter) -> dict[str, Tensor]:
    """The tensors of ``save_lora_file``: whole-weight LoRAs under ``diffusion_model.`` + official module names."""
    tensors = {}
    for module, down, up, alpha in lora.fused():
        key = DIFFUSION_MODEL_PREFIX + module
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return tensors


def save_lora_file(lora: LoraAdapter, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the LoRA as one safetensors file that ``pixart.lora`` and ComfyUI's LoraLoaderModelOnly load."""
    path = Path(path)
    _write_new(path, _safetensors(lora_file_tensors(lora), dtype, suffix_kept=".alpha"))  # alphas stay fp32
    return path


def peft_config(lora: LoraAdapter) -> dict:
    """The ``adapter_config.json`` of a PEFT LoRA with the adapter's rank, alpha and exact module names."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "target_modules": sorted(name for name, _, _ in lora.pairs()),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
    }


def save_peft_folder(lora: LoraAdapter, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a PEFT adapter folder with diffusers names (``PeftModel.from_pretrained(transformer, folder)``)."""
    folder = Path(folder)
    config, weights = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS[0]
    _refuse_existing([config, weights, folder / PEFT_WEIGHTS[1]])
    tensors = {}
    for name, down, up in lora.pairs():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = down
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = up
    _write_new(weights, _safetensors(tensors, dtype))
    _write_new(config, json.dumps(peft_config(lora), indent=2).encode())
    return folder


def position_table(config) -> Tensor:
    """(1, N, C) sin-cos table of the base grid, as official checkpoints store ``pos_embed``."""
    g = config.base_grid
    return sincos_2d(config.hidden_size, g, g, g, config.pe_interpolation).float()[None]


def save_full_official(
    model: nn.Module, path: str | Path, dtype: torch.dtype | None = None, extras: Mapping[str, Tensor] | None = None
) -> Path:
    """Write the fine-tuned transformer as one safetensors file with official keys (+ ``pos_embed``).

    ``extras``: more tensors official files carry that the model does not hold (e.g. ``y_embedder.y_embedding``,
    the null caption of the file it was trained from)."""
    tensors = dict(model.state_dict())
    tensors["pos_embed"] = position_table(model.config)
    clash = sorted(set(extras or {}) & set(tensors))
    if clash:
        raise TrainingError(f"save_full_official extras: {clash} are already model weights")
    tensors.update(extras or {})
    _write_new(Path(path), _safetensors(tensors, dtype))
    return Path(path)


def save_full_diffusers(model: nn.Module, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the fine-tuned transformer as a diffusers ``transformer/`` folder (``PixArtTransformer2DModel``)."""
    folder = Path(folder)
    config_path, weights_path = folder / DIFFUSERS_CONFIG, folder / DIFFUSERS_WEIGHTS
    _refuse_existing([config_path, weights_path])
    try:
        tensors = official_to_diffusers(dict(model.state_dict()))
    except KeyError as e:
        raise TrainingError(f"{folder}: cannot be written as a diffusers folder: {e.args[0]}") from e
    config = {"_class_name": TRANSFORMER_CLASS, **diffusers_config(model.config)}
    _write_new(weights_path, _safetensors(tensors, dtype))
    _write_new(config_path, json.dumps(config, indent=2).encode())
    return folder
