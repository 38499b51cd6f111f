"""Input embeddings of PixArt: patches, 2-D sin-cos positions, timesteps, sizes and captions (PixArt-alpha §2.3)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import Tensor, nn

FREQUENCY_CHANNELS = 256  # sinusoidal channels fed to the timestep and size MLPs


def sinusoidal_embedding(t: Tensor, channels: int = FREQUENCY_CHANNELS, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of scalars, cosines first (DiT's ``timestep_embedding``).

    Args:
        t: (M,) values, e.g. timesteps on the 0–999 scale or sizes in pixels.
    Returns:
        (M, channels) float32.
    """
    half = channels // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (M, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_1d(channels: int, positions: Tensor) -> Tensor:
    """(M,) float64 positions -> (M, channels): sines in the first half, cosines in the second."""
    omega = 1.0 / 10000 ** (torch.arange(channels // 2, dtype=torch.float64) / (channels / 2))
    out = positions[:, None] * omega[None]  # (M, channels/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(channels: int, grid_h: int, grid_w: int, base_grid: int, pe_interpolation: float) -> Tensor:
    """Fixed 2-D sin-cos position embedding of an (grid_h × grid_w) token grid, row-major.

    Each axis is stretched so that it spans ``[0, base_grid / pe_interpolation)`` whatever its length: this is how
    PixArt-alpha/Sigma see the same position range at every aspect ratio and resolution. The first ``channels / 2``
    channels encode the column (x) position, the second half the row (y) position, as in the official code.

    Returns:
        (grid_h * grid_w, channels) float64.
    """
    rows = torch.arange(grid_h, dtype=torch.float64) / (grid_h / base_grid) / pe_interpolation
    cols = torch.arange(grid_w, dtype=torch.float64) / (grid_w / base_grid) / pe_interpolation
    y, x = torch.meshgrid(rows, cols, indexing="ij")  # (grid_h, grid_w) each
    return torch.cat([sincos_1d(channels // 2, x.reshape(-1)), sincos_1d(channels // 2, y.reshape(-1))], dim=1)


def default_operations() -> SimpleNamespace:
    """The layer namespace used when the caller injects none: plain ``torch.nn``."""
    return SimpleNamespace(Linear=nn.Linear, LayerNorm=nn.LayerNorm, Conv2d=nn.Conv2d)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches to tokens: (B, C_in, H, W) -> (B, N, C)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.proj = operations.Conv2d(
            in_channels, hidden_size, patch_size, stride=patch_size, bias=True, dtype=dtype, device=device
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (B, C, H/p, W/p) -> (B, N, C), row-major


class ScalarEmbedder(nn.Module):
    """Sinusoidal features of a scalar through a two-layer SiLU MLP: (M,) -> (M, width).

    Used for timesteps (``t_embedder``) and, in PixArt-alpha, for image height/width and aspect ratio."""

    def __init__(self, width: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.mlp = nn.Sequential(
            operations.Linear(FREQUENCY_CHANNELS, width, bias=True, dtype=dtype, device=device),
            nn.SiLU(),
            operations.Linear(width, width, bias=True, dtype=dtype, device=device),
        )

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return self.mlp(sinusoidal_embedding(t).to(dtype))


class SizeEmbedder(ScalarEmbedder):
    """Micro-condition embedder: (B, k) values -> (B, k * width), each value embedded on its own."""

    def forward(self, s: Tensor, dtype: torch.dtype) -> Tensor:
        b, k = s.shape
        return super().forward(s.reshape(b * k), dtype).reshape(b, -1)  # (B*k, width) -> (B, k*width)


class Mlp(nn.Module):
    """Linear, tanh-GELU, Linear (timm's ``Mlp`` names ``fc1``/``fc2``): the block feed-forward and the caption
    projection. (..., in_features) -> (..., out_features)."""

    def __init__(
        self, in_features: int, hidden_features: int, out_features: int, dtype=None, device=None, operations=None
    ):
        super().__init__()
        self.fc1 = operations.Linear(in_features, hidden_features, bias=True, dtype=dtype, device=device)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = operations.Linear(hidden_features, out_features, bias=True, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = self.act(h) if torch.is_grad_enabled() else torch.ops.aten.gelu_(h, approximate="tanh")  # in place
        return self.fc2(h)


class CaptionEmbedder(nn.Module):
    """T5 states to the model width, (B, L, caption_channels) -> (B, L, C), under the official name
    ``y_embedder.y_proj``."""

    def __init__(self, caption_channels: int, hidden_size: int, dtype=None, device=None, operations=None):
        super().__init__()
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size, dtype, device, operations)

    def forward(self, y: Tensor) -> Tensor:
        return self.y_proj(y)
