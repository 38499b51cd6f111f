"""Block hooks: how caches, ComfyUI block patches and cancel checks wrap the blocks of one forward pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor


class BlockInputs(NamedTuple):
    """What every block of one forward shares."""

    y: Tensor  # (B, L', C) projected caption tokens
    t0: Tensor  # (B, 6C) adaLN-single output of the timestep (and alpha's size) embedding
    grid: tuple[int, int]  # (h, w) token grid of the image
    bias: Tensor | None  # None or (B, 1, 1, L') caption mask bias (0 keep, -inf drop)
    token_chunk: int | None  # tokens per chunk of the per-token work, None for all at once


BlockFn = Callable[[Tensor], Tensor]
"""One block on the image tokens: (B, N, C) -> (B, N, C); may update its input in place (no autograd)."""

BlockHook = Callable[[int, Tensor, BlockInputs, BlockFn], Tensor]
"""``hook(index, x, inputs, run) -> x``: called instead of block ``index`` with the (B, N, C) image tokens, the
inputs every block shares and ``run``, the block itself (or the next hook); returns the (B, N, C) tokens after the
block. A hook may call ``run`` once, not at all (skip or reuse the block), or on other tokens. ``run`` may update
the tokens it is given in place: clone them first to keep them."""


def call_hook(hook: BlockHook, index: int, inputs: BlockInputs, run: BlockFn, x: Tensor) -> Tensor:
    """``hook`` on block ``index`` with ``run`` inside it, in the argument order ``functools.partial`` needs."""
    return hook(index, x, inputs, run)
