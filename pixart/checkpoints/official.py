"""Official PixArt ``.pth`` checkpoints (and other pickled state dicts), loaded with ``weights_only=True``."""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from .errors import CheckpointError

log = logging.getLogger(__name__)

# Wrappers seen in the wild, most preferred first: training checkpoints hold both the raw and the EMA weights, and
# EMA is what inference wants.
WRAPPER_KEYS = ("state_dict_ema", "state_dict", "ema", "model", "module")


def _is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle (first byte 0x80)."""
    with open(path, "rb") as f:
        first = f.read(1)
    return first == b"\x80" or zipfile.is_zipfile(path)


def read_pickled(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.bin``/``.ckpt`` file, unwrapped from a ``state_dict`` (or EMA) wrapper."""
    if not _is_torch_file(path):
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (neither a torch zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated, corrupt, or holds objects other than tensors): {e}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            if key != "state_dict":
                log.info("%s: using the %r weights", path, key)
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors (top-level keys: {sorted(obj)[:8]})")
    return tensors
