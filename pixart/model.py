"""The PixArt-Sigma / PixArt-alpha diffusion transformer (PixArtMS), with the official parameter names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionFn, CrossAttention, SelfAttention, sdpa_attention
from .block_hooks import AttentionHook, BlockHook, BlockInputs, TokenRows, wrap_block
from .config import KVCompress, PixArtConfig
from .embeddings import (
    CaptionEmbedder,
    Mlp,
    PatchEmbed,
    ScalarEmbedder,
    SizeEmbedder,
    default_operations,
    sincos_2d,
)
from .errors import SettingError
from .lazy import Lazy

FP16_MAX = 65504.0
_POS_CACHE_SIZE = 4
CPU_TOKEN_CHUNK = 1024  # "auto" token chunk on CPU; GPUs run every token at once


def t2i_modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: x·(1 + scale) + shift, in one pass; without autograd it overwrites ``x`` (a fresh norm
    output) instead of allocating."""
    if torch.is_grad_enabled():
        return torch.addcmul(shift, x, 1 + scale)
    return torch.addcmul(shift, x, 1 + scale, out=x)


def table_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """dtype of the modulation tables: float8 storage (ComfyUI's fp8 weights) keeps them in the default float."""
    return None if dtype is not None and dtype.itemsize == 1 else dtype


def layer_norm(x: Tensor) -> Tensor:
    """Parameter-free LayerNorm over the channels (eps 1e-6), as before every modulation; fp16 is normalised in
    fp32 so that saturated activations do not overflow the variance."""
    if x.dtype == torch.float16:
        return F.layer_norm(x.float(), x.shape[-1:], eps=1e-6).half()
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def residual(x: Tensor, update: Tensor, gate: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """x + gate·update in one pass. Without autograd the sum is written into ``out`` (default ``x`` itself, in
    place): large CPU allocations cost page faults. In fp16 the sum saturates at ±65504 instead of overflowing to inf
    (the fp16 guard)."""
    if torch.is_grad_enabled():
        x = x + update if gate is None else torch.addcmul(x, gate, update)
    else:
        out = x if out is None else out
        x = torch.add(x, update, out=out) if gate is None else torch.addcmul(x, gate, update, out=out)
    return x.clamp_(-FP16_MAX, FP16_MAX) if x.dtype == torch.float16 else x


def resolve_token_chunk(token_chunk: int | str | None, device: torch.device) -> int | None:
    """Tokens per chunk of the blocks' per-token work that a ``token_chunk`` setting means on ``device``: "auto" is
    ``CPU_TOKEN_CHUNK`` on CPU and every token at once (None) elsewhere."""
    if token_chunk == "auto":
        return CPU_TOKEN_CHUNK if device.type == "cpu" else None
    return token_chunk


def token_rows(shape: tuple[int, int, int], chunk: int | None) -> list[TokenRows]:
    """The pieces a block's per-token work on a (B, N, C) stream runs on: the whole stream (``chunk`` None), or at
    most ``chunk`` tokens of one sample at a time."""
    if chunk is None:
        return [TokenRows(slice(None), slice(None), shape)]
    b, n, _ = shape
    return [TokenRows(slice(i, i + 1), slice(s, s + chunk), shape) for i in range(b) for s in range(0, n, chunk)]


def per_token(fn: Callable[[Tensor, TokenRows], Tensor], x: Tensor, rows: list[TokenRows], width: int) -> Tensor:
    """``fn(x[rows.index], rows)`` on each piece of ``rows``, gathered into one (B, N, width) tensor (the piece's own
    result when it is the whole stream)."""
    if len(rows) == 1 and rows[0].whole:
        return fn(x, rows[0])
    out = x.new_empty(*x.shape[:2], width)
    for r in rows:
        out[r.index] = fn(x[r.index], r)
    return out


def _compute(kind: str, rows: TokenRows, compute: Callable[[], Tensor]) -> Tensor:
    """The ``AttentionHook`` of a block without one: compute the attention."""
    return compute()


class Modulation(NamedTuple):
    """Per-block shift/scale/gate for self-attention (msa) and MLP, each (B, 1, C)."""

    shift_msa: Tensor
    scale_msa: Tensor
    gate_msa: Tensor
    shift_mlp: Tensor
    scale_mlp: Tensor
    gate_mlp: Tensor


class PixArtBlock(nn.Module):
    """One block: self-attention, cross-attention, MLP, each a residual update; adaLN-single modulates the first
    and the last (PixArt-alpha §2.3)."""

    def __init__(self, config: PixArtConfig, index: int, dtype=None, device=None, operations=None, attention=None):
        super().__init__()
        c = config.hidden_size
        conv_factor = config.conv_kv_factor if index in config.conv_kv_layers else None
        self.attn = SelfAttention(c, config.num_heads, conv_factor, dtype, device, operations, attention)
        self.cross_attn = CrossAttention(c, config.num_heads, dtype, device, operations, attention)
        self.mlp = Mlp(c, int(c * config.mlp_ratio), c, dtype, device, operations)
        self.scale_shift_table = nn.Parameter(torch.randn(6, c, dtype=table_dtype(dtype), device=device) / c**0.5)

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        t0: Tensor,
        grid: tuple[int, int],
        bias: Tensor | None,
        token_chunk: int | None = None,
        attention: AttentionHook | None = None,
        attention_fn: AttentionFn | None = None,
    ) -> Tensor:
        """The three residual updates, on the whole stream or (``token_chunk``, inference only) on at most
        ``token_chunk`` tokens of one sample at a time: only self-attention sees the whole sequence. The chunks'
        intermediates (at most chunk × 4C) stay small enough for the allocator to reuse instead of mapping fresh
        pages (on CPU, page faults cost a few % of a forward), and the MLP's N × 4C hidden layer never exists whole
        (lower peak memory).

        Args:
            x: (B, N, C) image tokens, not changed; y: (B, L, C) caption tokens; t0: (B, 6C) adaLN-single output;
            grid: (h, w) token grid; bias: None or (B, 1, 1, L) caption mask bias.
            token_chunk: tokens per piece of the per-token work without autograd; None runs every token at once.
            attention: consulted instead of computing each attention output (step caches); None computes them.
            attention_fn: this call's ``attention(q, k, v, bias)`` for both attentions; None: the layers' own.
        Returns:
            (B, N, C), a new tensor.
        """
        table = self.scale_shift_table.to(dtype=x.dtype, device=x.device)
        m = Modulation(*(table[None] + t0.view(x.shape[0], 6, -1)).chunk(6, dim=1))
        attend = attention or _compute
        grad = torch.is_grad_enabled()
        rows = token_rows(tuple(x.shape), None if grad else token_chunk)
        heads = Lazy(lambda: self.self_attention_heads(x, m, grid, rows, attention_fn))  # (B, N, C), when first needed
        cross = partial(self.cross_attn.attend, attention=attention_fn)
        keys_values = Lazy(lambda: self.cross_attn.keys_values(y))  # 2 × (B, h, L, d), when first needed
        # the block's output, filled piece by piece; allocated after self-attention (whose q, k, v are the peak)
        stream = None if grad else Lazy(lambda: torch.empty_like(x))

        def update(r: TokenRows) -> Tensor:
            i, s = r.index, r.samples
            sa = attend("self", r, lambda: self.attn.proj(heads()[i]))
            if r is rows[-1]:
                heads.clear()  # every piece has its self-attention output: the heads can go
            h = residual(x[i], sa, m.gate_msa[s], out=None if stream is None else stream()[i])
            del sa  # (B, N, C) when whole: gone before the MLP's hidden layer exists
            ca = attend("cross", r, lambda: cross(h, *(kv[s] for kv in keys_values()), _rows(bias, s)))
            h = residual(h, ca)
            del ca
            return residual(h, self.mlp(t2i_modulate(layer_norm(h), m.shift_mlp[s], m.scale_mlp[s])), m.gate_mlp[s])

        for r in rows:
            out = update(r)
        return out if stream is None else stream()

    def self_attention_heads(
        self, x: Tensor, m: Modulation, grid: tuple[int, int], rows: list[TokenRows], attention_fn: AttentionFn | None
    ) -> Tensor:
        """Self-attention over the whole sequence, before the output projection: (B, N, C) tokens -> (B, N, C) heads;
        the modulation and q, k, v projection run on ``rows``; ``attention_fn`` as in ``forward``."""

        def qkv(tokens: Tensor, r: TokenRows) -> Tensor:
            return self.attn.qkv(t2i_modulate(layer_norm(tokens), m.shift_msa[r.samples], m.scale_msa[r.samples]))

        return self.attn.attend(per_token(qkv, x, rows, 3 * x.shape[2]), grid, attention_fn)


def _rows(bias: Tensor | None, samples: slice) -> Tensor | None:
    return None if bias is None else bias[samples]


class FinalLayer(nn.Module):
    """Modulated norm and linear map from tokens to p×p×C_out patch values."""

    def __init__(self, config: PixArtConfig, dtype=None, device=None, operations=None):
        super().__init__()
        c, p = config.hidden_size, config.patch_size
        self.linear = operations.Linear(c, p * p * config.out_channels, bias=True, dtype=dtype, device=device)
        self.scale_shift_table = nn.Parameter(torch.randn(2, c, dtype=table_dtype(dtype), device=device) / c**0.5)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: (B, N, C), t: (B, C) timestep embedding -> (B, N, p·p·C_out)."""
        table = self.scale_shift_table.to(dtype=x.dtype, device=x.device)
        shift, scale = (table[None] + t[:, None]).chunk(2, dim=1)  # 2 × (B, 1, C)
        return self.linear(t2i_modulate(layer_norm(x), shift, scale))


class PixArtTransformer(nn.Module):
    """PixArt-Sigma / PixArt-alpha transformer: latents, timestep and T5 caption -> epsilon and learned variance.

    Args:
        config: architecture.
        kv_compress: KV token compression, or None.
        dtype, device: of the parameters.
        operations: namespace with ``Linear``, ``LayerNorm``, ``Conv2d`` (default ``torch.nn``); ComfyUI passes its
            casting ops here.
        attention: ``attention(q, k, v, bias)`` callable (default ``sdpa_attention``).
        compute_dtype: when set, inputs are cast to it (for callers that do not cast themselves).
        token_chunk: tokens per chunk of the blocks' per-token work at inference (``PixArtBlock.forward``): an int
            >= 1, None for all at once, or "auto" (``resolve_token_chunk``).
    """

    def __init__(
        self,
        config: PixArtConfig,
        kv_compress: KVCompress | None = None,
        dtype: torch.dtype | None = None,
        device=None,
        operations=None,
        attention: AttentionFn | None = None,
        compute_dtype: torch.dtype | None = None,
        token_chunk: int | str | None = "auto",
    ):
        super().__init__()
        if not (token_chunk is None or token_chunk == "auto" or (isinstance(token_chunk, int) and token_chunk >= 1)):
            raise ValueError(f'token_chunk must be an int >= 1, None or "auto", got {token_chunk!r}')
        self.token_chunk = token_chunk
        ops = operations or default_operations()
        attention = attention or sdpa_attention
        c = config.hidden_size
        self.config = config
        self.compute_dtype = compute_dtype
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, c, dtype, device, ops)
        self.t_embedder = ScalarEmbedder(c, dtype, device, ops)
        self.t_block = nn.Sequential(nn.SiLU(), ops.Linear(c, 6 * c, bias=True, dtype=dtype, device=device))
        self.y_embedder = CaptionEmbedder(config.caption_channels, c, dtype, device, ops)
        if config.micro_conditions:
            self.csize_embedder = SizeEmbedder(c // 3, dtype, device, ops)
            self.ar_embedder = SizeEmbedder(c // 3, dtype, device, ops)
        self.blocks = nn.ModuleList(PixArtBlock(config, i, dtype, device, ops, attention) for i in range(config.depth))
        self.final_layer = FinalLayer(config, dtype, device, ops)
        self._pos_cache: dict[tuple, Tensor] = {}
        self.kv_compress: KVCompress | None = None
        self.set_kv_compress(kv_compress)

    def set_kv_compress(self, kv_compress: KVCompress | None) -> None:
        """Switch KV compression (or turn it off with None) without reloading weights; the one place a
        ``KVCompress`` is checked against this model (its depth, and for "conv" its trained layers and factor)."""
        layers = kv_compress.layer_set(self.config.depth) if kv_compress is not None else frozenset()
        if kv_compress is not None and kv_compress.mode == "conv":
            trained = set(self.config.conv_kv_layers)
            if not trained:
                raise SettingError(
                    "KV compression mode 'conv' needs a checkpoint with trained KV-compression weights "
                    "(blocks.N.attn.sr / attn.norm); this one has none. Use 'avgpool', 'uniform' or 'ave'."
                )
            if not layers <= trained or kv_compress.factor != self.config.conv_kv_factor:
                raise SettingError(
                    f"KV compression mode 'conv': the checkpoint trained factor {self.config.conv_kv_factor} on "
                    f"layers {sorted(trained)}; asked for factor {kv_compress.factor} on layers {sorted(layers)}"
                )
        for i, block in enumerate(self.blocks):
            block.attn.kv_compress = kv_compress if i in layers else None
        self.kv_compress = kv_compress

    def pos_embed(self, grid_h: int, grid_w: int, device, dtype) -> Tensor:
        """(1, N, C) position embedding for a token grid, cached per grid, device and dtype."""
        key = (grid_h, grid_w, str(device), dtype)
        if key not in self._pos_cache:
            if len(self._pos_cache) >= _POS_CACHE_SIZE:
                self._pos_cache.pop(next(iter(self._pos_cache)))
            cfg = self.config
            table = sincos_2d(cfg.hidden_size, grid_h, grid_w, cfg.base_grid, cfg.pe_interpolation)
            self._pos_cache[key] = table.to(device=device, dtype=dtype)[None]
        return self._pos_cache[key]

    def run_block(self, index: int, x: Tensor, inputs: BlockInputs, hooks: Sequence[BlockHook] = ()) -> Tensor:
        """Block ``index`` on the (B, N, C) image tokens, through ``hooks`` (the first outermost)."""
        block = self.blocks[index]

        def run(tokens: Tensor, shared: BlockInputs) -> Tensor:
            args = (shared.y, shared.t0, shared.grid, shared.bias, shared.token_chunk)
            return block(tokens, *args, shared.attention, shared.attention_fn)

        for hook in reversed(hooks):
            run = wrap_block(hook, index, run)
        return run(x, inputs)

    def _check_inputs(self, x: Tensor, caption: Tensor, caption_mask: Tensor | None) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"PixArt expects latents (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}"
                + (" — is this a latent from another VAE?" if x.ndim == 4 else "")
            )
        if x.shape[2] % cfg.patch_size or x.shape[3] % cfg.patch_size:
            raise ValueError(
                f"PixArt latent size {x.shape[2]}×{x.shape[3]} must be a multiple of the patch size {cfg.patch_size} "
                f"(image sides a multiple of {8 * cfg.patch_size} pixels)"
            )
        if caption.ndim != 3 or caption.shape[0] != x.shape[0] or caption.shape[2] != cfg.caption_channels:
            raise ValueError(
                f"PixArt expects captions ({x.shape[0]}, L, {cfg.caption_channels}), got {tuple(caption.shape)}"
            )
        if caption_mask is not None and caption_mask.shape != caption.shape[:2]:
            raise ValueError(f"caption_mask {tuple(caption_mask.shape)} must be {tuple(caption.shape[:2])}")

    def _caption_bias(self, y: Tensor, caption_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Drop caption tokens masked in every sample and turn the rest of the mask into an additive bias.

        Returns:
            y (B, L', caption_channels) and None (all kept) or a (B, 1, 1, L') bias of 0 / -inf.
        """
        if caption_mask is None:
            return y, None
        keep = caption_mask > 0.5  # (B, L)
        empty = (~keep.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"caption_mask of sample(s) {empty} is all zeros: at least one token must be kept")
        used = keep.any(dim=0)  # (L,)
        if not bool(used.all()):
            y, keep = y[:, used], keep[:, used]
        if bool(keep.all()):
            return y, None
        bias = torch.zeros(keep.shape, dtype=y.dtype, device=y.device).masked_fill_(~keep, float("-inf"))
        return y, bias[:, None, None, :]

    def _embed_timestep(
        self, timestep: Tensor, latent: Tensor, resolution: Tensor | None, aspect_ratio: Tensor | None
    ) -> Tensor:
        """(B,) timesteps (+ alpha micro-conditions from the (B, C_in, H, W) latent's size) -> (B, C) embedding."""
        b, _, h, w = latent.shape
        device, dtype = latent.device, latent.dtype
        t = self.t_embedder(timestep.to(device).reshape(-1).expand(b), dtype)
        if not self.config.micro_conditions:
            return t
        if resolution is None:
            resolution = torch.tensor([[8.0 * h, 8.0 * w]], device=device).expand(b, 2)
        if aspect_ratio is None:
            aspect_ratio = torch.full((b, 1), h / w, device=device)
        size = [self.csize_embedder(resolution.to(device), dtype), self.ar_embedder(aspect_ratio.to(device), dtype)]
        return t + torch.cat(size, dim=1)  # (B, C)

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        caption: Tensor,
        caption_mask: Tensor | None = None,
        resolution: Tensor | None = None,
        aspect_ratio: Tensor | None = None,
        block_hooks: Sequence[BlockHook] = (),
        attention_fn: AttentionFn | None = None,
    ) -> Tensor:
        """
        Args:
            x: (B, C_in, H, W) latents.
            timestep: (B,) or scalar, 0–999 scale.
            caption: (B, L, caption_channels) T5 states.
            caption_mask: (B, L) ones for tokens to attend, zeros for padding; None attends to all.
            resolution: alpha only, (B, 2) image height, width in pixels (default 8·H, 8·W).
            aspect_ratio: alpha only, (B, 1) height / width (default H / W).
            block_hooks: ``BlockHook``s wrapped around every block, the first outermost (step caches, block patches,
                cancel checks).
            attention_fn: this call's ``attention(q, k, v, bias)`` (ComfyUI's per-model choice); None: the model's.
        Returns:
            (B, C_out, H, W) in the dtype of ``x``: epsilon in the first C_in channels, then the variance.
        """
        self._check_inputs(x, caption, caption_mask)
        out_dtype = x.dtype
        if self.compute_dtype is not None:
            x, caption = x.to(self.compute_dtype), caption.to(self.compute_dtype)
        cfg = self.config
        b, _, height, width = x.shape
        p = cfg.patch_size
        grid = (height // p, width // p)
        t = self._embed_timestep(timestep, x, resolution, aspect_ratio)  # (B, C)
        x = self.x_embedder(x) + self.pos_embed(*grid, x.device, x.dtype)  # (B, N, C)
        t0 = self.t_block(t)  # (B, 6C)
        caption, bias = self._caption_bias(caption, caption_mask)
        y = self.y_embedder(caption)  # (B, L', C)
        inputs = BlockInputs(y, t0, grid, bias, resolve_token_chunk(self.token_chunk, x.device), None, attention_fn)
        for index in range(len(self.blocks)):
            x = self.run_block(index, x, inputs, block_hooks)
        x = self.final_layer(x, t)  # (B, N, p·p·C_out)
        x = x.view(b, *grid, p, p, cfg.out_channels)  # (B, h, w, p, p, C_out)
        x = torch.einsum("bhwpqc->bchpwq", x).reshape(b, cfg.out_channels, height, width)
        return x.to(out_dtype)
