"""Single ``.safetensors`` files: official keys, diffusers keys, or ComfyUI-saved (``model.diffusion_model.``)."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import Tensor

from .errors import CheckpointError


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file (on CPU)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
