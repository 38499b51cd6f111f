"""Reading any supported PixArt transformer checkpoint into official keys plus its architecture.

Formats: official ``.pth`` (plain or ``state_dict``/EMA wrapper), ``.safetensors``/``.sft`` with official or diffusers
keys,
ComfyUI-saved files (``model.diffusion_model.`` prefix), and diffusers folders (``config.json`` + weights, sharded
or not, or a whole pipeline folder with ``transformer/``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..config import PixArtConfig
from ..detect import TRAINING_ONLY_KEYS, detect_config
from ..errors import CheckpointError, listing, short
from ..io import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES, check_entry, read_weights, weights_format
from .diffusers_dir import folder_hints, read_diffusers_folder, transformer_folder
from .keymap import COMFYUI_PREFIX, DIFFUSION_MODEL_PREFIX, PIPELINE_PREFIX, diffusers_to_official, is_diffusers_layout
from .scheduler_config import pipeline_noise_schedule

log = logging.getLogger(__name__)

# Prefixes wrappers put in front of the transformer's own names, longest first.
PREFIXES = (COMFYUI_PREFIX, DIFFUSION_MODEL_PREFIX, PIPELINE_PREFIX, "module.", "model.")
# Wrappers seen in the wild, most preferred first: training checkpoints hold both the raw and the EMA weights, and
# EMA is what inference wants.
WRAPPER_KEYS = ("state_dict_ema", "state_dict", "ema", "model", "module")

__all__ = [
    "CheckpointError",
    "check_against_model",
    "pipeline_noise_schedule",
    "read_checkpoint",
    "read_tensors",
    "to_official_keys",
]


def read_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict, str]:
    """The raw tensors of a file or folder, hints from side files, and a name for messages."""
    path = Path(path)
    if check_entry(path, CheckpointError, ("file", "folder"), "file or folder") == "folder":
        folder = transformer_folder(path)
        hints = folder_hints(folder)
        return read_diffusers_folder(folder), hints, str(folder)
    if weights_format(path) is not None:
        return read_weights(path, CheckpointError, WRAPPER_KEYS), {}, str(path)
    raise CheckpointError(
        f"{path}: unsupported file type {short(path.suffix, 20)!r}; expected "
        f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)} or a diffusers folder"
    )


def _strip_prefix(tensors: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    for prefix in PREFIXES:
        inside = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if inside and any(k.startswith(("blocks.", "transformer_blocks.")) for k in inside):
            others = len(tensors) - len(inside)
            if others:
                log.info("%s: using the %d tensors under %r, ignoring %d others", source, len(inside), prefix, others)
            return inside
    return tensors


def to_official_keys(tensors: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Strip wrapper prefixes and convert diffusers names to official ones."""
    tensors = _strip_prefix(tensors, source)
    if not is_diffusers_layout(tensors):
        return tensors
    converted, unknown = diffusers_to_official(tensors, source)
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} tensors are not PixArt transformer weights: {listing(unknown)}"
        )
    return converted


def weight_problems(state_dict: Mapping[str, Tensor], expected: Mapping[str, torch.Size]) -> list[str]:
    """What keeps ``state_dict`` from fitting a module whose tensors have the ``expected`` shapes: missing,
    unexpected and wrongly shaped tensors, each with key, expected and found; empty when it fits."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{short(k, 60)} is {tuple(v.shape)}, expected {tuple(expected[k])}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {len(wrong)}: {'; '.join(wrong[:3])}")
    return problems


def check_against_model(state_dict: Mapping[str, Tensor], config: PixArtConfig, source: str) -> None:
    """Raise CheckpointError listing missing, unexpected and wrongly shaped tensors for ``config``."""
    from ..model import PixArtTransformer

    with torch.device("meta"):
        expected = {k: v.shape for k, v in PixArtTransformer(config).state_dict().items()}
    problems = weight_problems(state_dict, expected)
    if problems:
        shape = (
            f"depth {config.depth}, hidden_size {config.hidden_size}, patch_size {config.patch_size}, "
            f"caption_channels {config.caption_channels}, micro_conditions {config.micro_conditions}"
        )
        raise CheckpointError(f"{source}: does not match a PixArt model with {shape}: " + "; ".join(problems))


def read_checkpoint(path: str | Path, variant: str | Mapping = "auto") -> tuple[dict[str, Tensor], PixArtConfig]:
    """Load a PixArt transformer checkpoint of any supported format.

    Args:
        path: file or folder.
        variant: "auto", a preset name (``pixart.VARIANTS``) or a dict of PixArtConfig fields.
    Returns:
        (state dict with official keys, without training-only tensors; detected config).
    """
    tensors, hints, source = read_tensors(path)
    state_dict = to_official_keys(tensors, source)
    config = detect_config(state_dict, source, variant, hints)
    for key in TRAINING_ONLY_KEYS:
        state_dict.pop(key, None)
    check_against_model(state_dict, config, source)
    return state_dict, config
