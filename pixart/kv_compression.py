"""Training-free and trained KV token compression on the 2-D token grid (PixArt-Sigma §3.2)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor


def _pad_to_multiple(grid: Tensor, factor: int) -> Tensor:
    """Repeat the last row/column so both grid sides divide by ``factor``. (B, C, H, W) -> (B, C, H+, W+)."""
    pad_h = -grid.shape[-2] % factor
    pad_w = -grid.shape[-1] % factor
    if pad_h or pad_w:
        grid = F.pad(grid, (0, pad_w, 0, pad_h), mode="replicate")
    return grid


def _crop_to_multiple(grid: Tensor, factor: int) -> Tensor:
    """Drop the last rows/columns that do not fill a whole window. (B, C, H, W) -> (B, C, H-, W-)."""
    h, w = grid.shape[-2:]
    return grid[..., : h - h % factor, : w - w % factor]


def compressed_grid_size(h: int, w: int, factor: int, remainder: str) -> tuple[int, int]:
    """Grid size after compression: ceil(h/factor) × ceil(w/factor) when the remainder is kept, floor when dropped."""
    if remainder == "keep":
        return -(-h // factor), -(-w // factor)
    return h // factor, w // factor


def compress_kv(
    tokens: Tensor,
    grid: tuple[int, int],
    mode: str,
    factor: int,
    remainder: str,
    conv: Callable[[Tensor], Tensor] | None = None,
    norm: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Downsample key or value tokens on their grid.

    Args:
        tokens: (B, N, C) with N = h·w in row-major order.
        grid: (h, w) token grid.
        mode: ``conv`` | ``ave`` | ``uniform`` | ``avgpool`` (see ``KVCompress``).
        conv, norm: the depthwise stride-``factor`` convolution and LayerNorm, for ``conv`` only.
    Returns:
        (B, N', C) with N' = h'·w' from ``compressed_grid_size``.
    """
    b, n, c = tokens.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"KV compression: {n} tokens do not form a {h}×{w} grid")
    x = tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w)
    keep = remainder == "keep"
    if mode == "uniform":
        x = x if keep else _crop_to_multiple(x, factor)
        x = x[..., ::factor, ::factor]
    elif mode == "avgpool":
        x = F.avg_pool2d(x, factor, factor, ceil_mode=keep)
    elif mode == "ave":
        x = _pad_to_multiple(x, factor) if keep else x
        x = F.interpolate(x, scale_factor=1 / factor, mode="nearest")
    elif mode == "conv":
        if conv is None or norm is None:
            raise ValueError("KV compression mode 'conv' needs the checkpoint's convolution and norm weights")
        x = conv(_pad_to_multiple(x, factor) if keep else x)
    else:
        raise ValueError(f"unknown KV compression mode {mode!r}")
    # (B, C, h', w') -> (B, N', C), channels contiguous: attention kernels need a unit stride along the head dim
    # (a strided view sends SDPA to its O(N·N') memory fallback).
    out = x.flatten(2).transpose(1, 2).contiguous()
    return norm(out) if mode == "conv" else out
