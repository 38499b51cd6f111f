"""``load_dit``: any supported checkpoint to a ready PixArt transformer."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .attention import query_chunked, sdpa_attention
from .checkpoints import read_checkpoint
from .config import COMPUTE_DTYPES, KVCompress
from .model import PixArtTransformer


def load_dit(
    path: str | Path,
    variant: str | Mapping = "auto",
    dtype: torch.dtype = torch.float32,
    kv_compress: KVCompress | None = None,
    device: str | torch.device = "cpu",
    attention_chunk: int | None = None,
    token_chunk: int | str | None = "auto",
    torch_compile: bool = False,
) -> PixArtTransformer:
    """Load a PixArt-Sigma/alpha transformer from an official ``.pth``, a ``.safetensors``/``.sft`` file (official,
    diffusers or ComfyUI keys) or a diffusers folder.

    Args:
        path: checkpoint file or folder.
        variant: "auto", a name from ``pixart.VARIANTS``, or a dict of ``PixArtConfig`` fields.
        dtype: weights and compute dtype (float32, float16 or bfloat16); inputs are cast to it, outputs come back
            in the input's dtype.
        kv_compress: ``KVCompress`` settings or None.
        device: where the weights go.
        attention_chunk: process at most this many queries per attention call (None: all at once).
        token_chunk: tokens per chunk of the blocks' per-token work at inference: "auto" (1024 on CPU, all at once
            on GPU), an int, or None (all at once); see ``PixArtTransformer``.
        torch_compile: wrap the model in ``torch.compile`` (faster steps after a first slow one; needs a C++ compiler on
            CPU and Triton on CUDA).
    Returns:
        The model in eval mode; ``model.config`` holds its architecture.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"load_dit: dtype must be one of {COMPUTE_DTYPES}, got {dtype}")
    state_dict, config = read_checkpoint(path, variant)
    attention = sdpa_attention if attention_chunk is None else query_chunked(sdpa_attention, attention_chunk)
    with torch.device("meta"):
        model = PixArtTransformer(
            config, kv_compress, dtype=dtype, attention=attention, compute_dtype=dtype, token_chunk=token_chunk
        )
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}, assign=True)
    model.eval()
    if torch_compile:
        model.compile()
    return model
