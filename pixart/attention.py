"""Self-attention with optional KV token compression, and masked cross-attention to the caption."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import KVCompress
from .kv_compression import compress_kv

AttentionFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """Softmax attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where torch
    has them).

    Args:
        q: (B, h, N, d); k, v: (B, h, M, d).
        bias: None or an additive float bias broadcastable to (B, h, N, M) (0 keeps, -inf drops a key).
    Returns:
        (B, h, N, d).
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def query_chunked(attention: AttentionFn, chunk: int) -> AttentionFn:
    """Wrap an attention function to process at most ``chunk`` queries at a time.

    Exact (softmax is per query row); bounds the (chunk × M) score memory of backends that materialise it, which
    is what lets 4096² images (65,536 tokens) run on such backends.
    """
    if chunk < 1:
        raise ValueError(f"attention query chunk must be >= 1, got {chunk}")

    def chunked(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        if q.shape[2] <= chunk:
            return attention(q, k, v, bias)
        return torch.cat([attention(part, k, v, bias) for part in q.split(chunk, dim=2)], dim=2)

    return chunked


class SelfAttention(nn.Module):
    """Multi-head self-attention over image tokens; keys and values may be compressed on the token grid.

    ``sr`` (depthwise stride-s convolution) and ``norm`` exist only in blocks whose checkpoint trained them
    (official names, PixArt-Sigma ``AttentionKVCompress``)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        conv_factor: int | None = None,
        dtype=None,
        device=None,
        operations=None,
        attention: AttentionFn = sdpa_attention,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.attention = attention
        self.kv_compress: KVCompress | None = None
        self.qkv = operations.Linear(hidden_size, 3 * hidden_size, bias=True, dtype=dtype, device=device)
        self.proj = operations.Linear(hidden_size, hidden_size, bias=True, dtype=dtype, device=device)
        if conv_factor is not None:
            self.sr = operations.Conv2d(
                hidden_size,
                hidden_size,
                conv_factor,
                stride=conv_factor,
                groups=hidden_size,
                bias=True,
                dtype=dtype,
                device=device,
            )
            self.norm = operations.LayerNorm(hidden_size, dtype=dtype, device=device)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """
        Args:
            x: (B, N, C) image tokens, N = h·w of ``grid``.
        Returns:
            (B, N, C).
        """
        return self.proj(self.attend(self.qkv(x), grid))

    def attend(self, qkv: Tensor, grid: tuple[int, int], attention: AttentionFn | None = None) -> Tensor:
        """Attention over projected tokens, before the output projection: (B, N, 3C) queries|keys|values ->
        (B, N, C) heads side by side; ``attention`` (this call's) replaces the layer's own."""
        b, n, c = *qkv.shape[:2], qkv.shape[2] // 3
        heads, d = self.num_heads, c // self.num_heads
        kv = self.kv_compress
        if kv is None:
            q, k, v = qkv.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, h, N, d)
        else:
            q, k, v = qkv.split(c, dim=-1)  # 3 × (B, N, C), views
            conv, norm = (self.sr, self.norm) if kv.mode == "conv" else (None, None)
            # keys and values one at a time: a joint copy of both would be the largest buffer of the block at 4K
            k, v = (compress_kv(z, grid, kv.mode, kv.factor, kv.remainder, conv, norm) for z in (k, v))  # (B, N', C)
            q, k, v = (z.view(b, -1, heads, d).transpose(1, 2) for z in (q, k, v))  # (B, h, N or N', d)
        out = (attention or self.attention)(q, k, v, None)  # (B, h, N, d)
        return out.transpose(1, 2).reshape(b, n, c)


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens to caption tokens, with a per-sample key mask."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dtype=None,
        device=None,
        operations=None,
        attention: AttentionFn = sdpa_attention,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.attention = attention
        self.q_linear = operations.Linear(hidden_size, hidden_size, bias=True, dtype=dtype, device=device)
        self.kv_linear = operations.Linear(hidden_size, 2 * hidden_size, bias=True, dtype=dtype, device=device)
        self.proj = operations.Linear(hidden_size, hidden_size, bias=True, dtype=dtype, device=device)

    def forward(self, x: Tensor, y: Tensor, bias: Tensor | None) -> Tensor:
        """
        Args:
            x: (B, N, C) image tokens.
            y: (B, L, C) projected caption tokens.
            bias: None or (B, 1, 1, L) additive mask (0 keep, -inf drop).
        Returns:
            (B, N, C).
        """
        return self.attend(x, *self.keys_values(y), bias)

    def keys_values(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L, C) caption tokens -> keys and values, 2 × (B, h, L, d); computed once per block when the image
        tokens are attended in chunks."""
        b, n, c = y.shape
        heads, d = self.num_heads, c // self.num_heads
        return self.kv_linear(y).view(b, n, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)

    def attend(
        self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, attention: AttentionFn | None = None
    ) -> Tensor:
        """(B, N, C) image tokens to the caption's keys and values (see ``keys_values``) -> (B, N, C);
        ``attention`` (this call's) replaces the layer's own."""
        b, n, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        q = self.q_linear(x).view(b, n, heads, d).transpose(1, 2)  # (B, h, N, d)
        out = (attention or self.attention)(q, k, v, bias)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))
