"""The PixArt ControlNet-Transformer, "half" design (PixArt-delta, arXiv 2401.05252, section 3, ControlNet-Transformer).

N trainable copies of the base model's first N blocks (13 in the released models) run beside the base model:

- the control image's VAE latent is embedded by the **base** model's patch embedder plus the position table of its
  token grid: c, (B, N_tok, C);
- base block 0 runs on the image tokens: x0;
- copy 0 takes ``x0 + before_proj(c)``, copy i takes copy i-1's output; all copies use the base's caption, adaLN-single
  output and caption mask;
- ``after_proj`` of copy i (a zero-initialised C -> C linear map) is added to the input of base block i + 1, i.e. to
  blocks 1..N; the other blocks run unchanged.

Parameter names are the official ``ControlPixArtHalf``'s (``controlnet.{i}.copied_block.*``,
``controlnet.0.before_proj``, ``controlnet.{i}.after_proj``), so official files load as they are. The base model
receives the residuals through a block hook (:func:`add_to_block_inputs`), the mechanism its caches, KV compression,
token chunking and ComfyUI's block patches already work with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attention import AttentionFn, sdpa_attention
from ..block_hooks import BlockFn, BlockHook, BlockInputs
from ..config import PixArtConfig
from ..embeddings import default_operations
from ..errors import CheckpointError
from ..model import PixArtBlock, PixArtTransformer, residual


@dataclass(frozen=True)
class ControlNetConfig:
    """Architecture of one ControlNet-Transformer, read off its file (``pixart.controlnet.read_controlnet``)."""

    copies: int  # N, copies of base blocks 0..N-1; their residuals go to base blocks 1..N
    hidden_size: int  # C, must equal the base model's
    num_heads: int  # h, must equal the base model's
    mlp_ratio: float = 4.0  # MLP hidden width of the copies = mlp_ratio * C
    conv_kv_layers: tuple[int, ...] = ()  # copies carrying trained KV-compression convolutions (attn.sr)
    conv_kv_factor: int = 1  # kernel = stride of those convolutions; 1 when there are none

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ValueError(f"ControlNetConfig.copies must be >= 1, got {self.copies}")
        self.block_config()  # checks width, heads, MLP ratio and KV layers

    def block_config(self) -> PixArtConfig:
        """The block hyperparameters of the copies, as a PixArt config of ``copies`` blocks."""
        return PixArtConfig(
            depth=self.copies,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            conv_kv_layers=self.conv_kv_layers,
            conv_kv_factor=self.conv_kv_factor,
        )


class ControlBlock(nn.Module):
    """One copy: ``copied_block`` (a PixArt block), ``before_proj`` on copy 0 only, ``after_proj`` on every copy."""

    def __init__(self, config: PixArtConfig, index: int, dtype=None, device=None, operations=None, attention=None):
        super().__init__()
        c = config.hidden_size
        self.copied_block = PixArtBlock(config, index, dtype, device, operations, attention)
        if index == 0:
            self.before_proj = operations.Linear(c, c, bias=True, dtype=dtype, device=device)
        self.after_proj = operations.Linear(c, c, bias=True, dtype=dtype, device=device)


class PixArtControlNet(nn.Module):
    """The N copies. ``forward`` turns the base's block-0 output and the embedded control latent into the residuals
    of base blocks 1..N; :func:`control_hook` and :func:`control_residuals` drive it beside a base model.

    Args:
        config: architecture (from the file).
        dtype, device, operations, attention: as for ``PixArtTransformer``.
        source: file name for messages.
    """

    def __init__(
        self,
        config: ControlNetConfig,
        dtype=None,
        device=None,
        operations=None,
        attention: AttentionFn | None = None,
        source: str = "ControlNet",
    ):
        super().__init__()
        ops = operations or default_operations()
        blocks = config.block_config()
        self.config = config
        self.source = source
        attention = attention or sdpa_attention
        self.controlnet = nn.ModuleList(
            ControlBlock(blocks, i, dtype, device, ops, attention) for i in range(config.copies)
        )

    def check_base(self, base: PixArtConfig) -> None:
        """CheckpointError naming the ControlNet file unless its copies fit the base model ``base``."""
        cfg = self.config
        problems = []
        if cfg.hidden_size != base.hidden_size:
            problems.append(f"width {cfg.hidden_size}, the base model's is {base.hidden_size}")
        if cfg.num_heads != base.num_heads:
            problems.append(f"{cfg.num_heads} attention heads, the base model has {base.num_heads}")
        if cfg.copies > base.depth - 1:
            problems.append(f"{cfg.copies} block copies, the base model has only {base.depth - 1} blocks after block 0")
        if problems:
            raise CheckpointError(
                f"{self.source}: this ControlNet does not fit the PixArt model: {'; '.join(problems)}"
            )

    def follow_kv_compression(self, base: PixArtTransformer) -> None:
        """Give copy i the KV compression of base block i (the block it copies), as the official copies inherit it."""
        for i, copy in enumerate(self.controlnet):
            kv = base.blocks[i].attn.kv_compress
            if kv is not None and kv.mode == "conv" and not hasattr(copy.copied_block.attn, "sr"):
                raise CheckpointError(
                    f"{self.source}: KV compression 'conv' is on for base block {i}, but ControlNet copy {i} has no "
                    f"trained KV-compression weights (controlnet.{i}.copied_block.attn.sr); use another KV mode"
                )
            copy.copied_block.attn.kv_compress = kv

    def forward(self, x0: Tensor, hint: Tensor, inputs: BlockInputs) -> list[Tensor]:
        """
        Args:
            x0: (B, N_tok, C) output of base block 0 (not modified).
            hint: (B, N_tok, C) control latent embedded by the base model (:func:`embed_hint`).
            inputs: the base forward's shared block inputs (caption, adaLN-single output, grid, mask, chunking).
        Returns:
            N residuals, each (B, N_tok, C): entry i is added to the input of base block i + 1.
        """
        first = self.controlnet[0]
        c = x0 + first.before_proj(hint)  # (B, N_tok, C)
        out = []
        for copy in self.controlnet:
            c = copy.copied_block(
                c, inputs.y, inputs.t0, inputs.grid, inputs.bias, inputs.token_chunk, attention_fn=inputs.attention_fn
            )  # the call's attention (ComfyUI's per-model override) for the copies too
            out.append(copy.after_proj(c))
        return out


def embed_hint(base: PixArtTransformer, hint: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, C_in, H, W) control latent -> (B, N_tok, C): the base model's patch embedder plus its position table of
    ``grid`` (the token grid of the image being denoised, which the latent must match)."""
    p = base.config.patch_size
    if (
        hint.ndim != 4
        or hint.shape[1] != base.config.in_channels
        or tuple(hint.shape[2:]) != (grid[0] * p, grid[1] * p)
    ):
        raise ValueError(
            f"ControlNet hint latent {tuple(hint.shape)}: expected (B, {base.config.in_channels}, {grid[0] * p}, "
            f"{grid[1] * p}), the size of the latent being denoised"
        )
    return base.x_embedder(hint) + base.pos_embed(*grid, hint.device, hint.dtype)


def add_to_block_inputs(residuals: Mapping[int, Tensor]) -> BlockHook:
    """A block hook adding ``residuals[i]`` ((B, N_tok, C), cast to the tokens' dtype and device) to the input of
    block i before it runs; other blocks pass through. The sum is a new tensor: hooks outside may keep the tokens
    they passed in (step caches do)."""

    def hook(index: int, x: Tensor, inputs: BlockInputs, run: BlockFn) -> Tensor:
        add = residuals.get(index)
        if add is not None:
            if add.shape != x.shape:
                raise ValueError(
                    f"ControlNet residual for block {index} is {tuple(add.shape)}, the block's input is "
                    f"{tuple(x.shape)}: the control was computed for another batch or image size"
                )
            add = add.to(dtype=x.dtype, device=x.device)
            x = residual(x, add, out=None if torch.is_grad_enabled() else torch.empty_like(x))
        return run(x)

    return hook


def _residuals_after_block0(
    controlnet: PixArtControlNet, base: PixArtTransformer, x0: Tensor, hint: Tensor, inputs: BlockInputs
) -> list[Tensor]:
    controlnet.check_base(base.config)
    controlnet.follow_kv_compression(base)
    if hint.shape[0] != x0.shape[0]:
        if hint.shape[0] != 1:
            raise ValueError(f"ControlNet hint latent has batch {hint.shape[0]}, the model call {x0.shape[0]}")
        hint = hint.expand(x0.shape[0], -1, -1, -1)
    return controlnet(x0, embed_hint(base, hint.to(x0.dtype), inputs.grid), inputs)


def control_hook(controlnet: PixArtControlNet, base: PixArtTransformer, hint: Tensor, scale: float = 1.0) -> BlockHook:
    """A block hook for ``base.forward(..., block_hooks=[...])`` that applies a ControlNet in the same forward: after
    base block 0 it computes the residuals (times ``scale``), then adds them to the inputs of blocks 1..N.

    Args:
        hint: (B or 1, C_in, H, W) control latent, in the latent space the base model denoises (VAE latent times the
            VAE's scale factor), the size of the latents.
    Several ControlNets: one hook each; their residuals add.
    """
    residuals: dict[int, Tensor] = {}
    add = add_to_block_inputs(residuals)

    def hook(index: int, x: Tensor, inputs: BlockInputs, run: BlockFn) -> Tensor:
        if index != 0:
            return add(index, x, inputs, run)
        residuals.clear()
        x = run(x)
        for i, r in enumerate(_residuals_after_block0(controlnet, base, x, hint, inputs)):
            residuals[i + 1] = r if scale == 1.0 else r * scale
        return x

    return hook


def control_residuals(
    controlnet: PixArtControlNet,
    base: PixArtTransformer,
    hint: Tensor,
    x: Tensor,
    timestep: Tensor,
    caption: Tensor,
    caption_mask: Tensor | None = None,
    resolution: Tensor | None = None,
    aspect_ratio: Tensor | None = None,
    block_hooks: Sequence[BlockHook] = (),
) -> list[Tensor]:
    """The ControlNet's residuals for one model call, before the base model's own forward (as ComfyUI's ControlNets
    compute them): the base's embeddings and block 0 run, then the copies; blocks 1.. are skipped.

    Args:
        hint: (B or 1, C_in, H, W) control latent (see :func:`control_hook`).
        x, timestep, caption, caption_mask, resolution, aspect_ratio: the base model's call
            (``PixArtTransformer.forward``).
        block_hooks: hooks to run block 0 through (ComfyUI's block patches), the first outermost.
    Returns:
        N residuals, each (B, N_tok, C): entry i goes to the input of base block i + 1 (:func:`add_to_block_inputs`).
    """
    out: list[Tensor] = []

    def capture(index: int, tokens: Tensor, inputs: BlockInputs, run: BlockFn) -> Tensor:
        if index != 0:
            return tokens  # blocks after 0 are not needed: skipped
        tokens = run(tokens)
        out.extend(_residuals_after_block0(controlnet, base, tokens, hint, inputs))
        return tokens

    # The plain PixArt forward (a subclass may wrap ``forward`` with its host's call conventions).
    PixArtTransformer.forward(
        base, x, timestep, caption, caption_mask, resolution, aspect_ratio, [capture, *block_hooks]
    )
    return out
