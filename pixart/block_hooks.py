"""Block hooks: how caches, ComfyUI block patches and cancel checks wrap the blocks of one forward pass.

A ``BlockHook`` wraps a whole block. A hook that wants to change how the block's attention sub-layers run (T-GATE
reuses their outputs) passes the block an ``AttentionHook`` through ``BlockInputs.attention``: one mechanism, two
levels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from torch import Tensor

from .attention import AttentionFn


class TokenRows(NamedTuple):
    """The rows of a block's (B, N, C) token stream that one piece of its per-token work covers: every row at once,
    or (token chunking) up to ``token_chunk`` tokens of one sample."""

    samples: slice  # along B
    tokens: slice  # along N
    shape: tuple[int, int, int]  # (B, N, C) of the whole stream

    @property
    def index(self) -> tuple[slice, slice]:
        """``stream[rows.index]`` is this piece, a (B or 1, <= N, C) view."""
        return self.samples, self.tokens

    @property
    def whole(self) -> bool:
        """Whether this piece is the whole stream."""
        return self.samples == slice(None) and self.tokens == slice(None)


AttentionHook = Callable[[str, TokenRows, Callable[[], Tensor]], Tensor]
"""``hook(kind, rows, compute) -> output``: consulted by a block's attention sub-layers instead of computing them.
``kind`` is "self" or "cross"; ``compute()`` computes that attention's output on ``rows`` (after the output
projection, before the gate and the residual add). The hook returns the output to use, ``compute()``'s or one it kept;
the block only reads it, so the hook may keep ``compute()``'s result as it is."""


class BlockInputs(NamedTuple):
    """What every block of one forward shares."""

    y: Tensor  # (B, L', C) projected caption tokens
    t0: Tensor  # (B, 6C) adaLN-single output of the timestep (and alpha's size) embedding
    grid: tuple[int, int]  # (h, w) token grid of the image
    bias: Tensor | None  # None or (B, 1, 1, L') caption mask bias (0 keep, -inf drop)
    token_chunk: int | None  # tokens per chunk of the per-token work, None for all at once
    attention: AttentionHook | None = None  # consulted by the attention sub-layers; None computes them
    attention_fn: AttentionFn | None = None  # this forward's attention(q, k, v, bias); None: the layers' own


class BlockFn(Protocol):
    """One block on the image tokens: ``run(x)`` or ``run(x, inputs)``, (B, N, C) -> (B, N, C). ``inputs`` replaces
    the ``BlockInputs`` the hook was given (for this block and the hooks inside); the block never changes ``x``."""

    def __call__(self, x: Tensor, inputs: BlockInputs | None = None) -> Tensor: ...


BlockHook = Callable[[int, Tensor, BlockInputs, BlockFn], Tensor]
"""``hook(index, x, inputs, run) -> x``: called instead of block ``index`` with the (B, N, C) image tokens, the
inputs every block shares and ``run``, the block itself (or the next hook); returns the (B, N, C) tokens after the
block. A hook may call ``run`` once, not at all (skip or reuse the block), or on other tokens or inputs. Neither
``run`` nor the hooks change the tokens they are given, so a hook may keep ``x`` and ``run``'s result as they are."""


def wrap_block(hook: BlockHook, index: int, inner: Callable[[Tensor, BlockInputs], Tensor]) -> Callable:
    """``inner(x, inputs)`` (block ``index`` or the next hook) wrapped in ``hook``: a ``(x, inputs) -> x`` whose
    hook sees a ``BlockFn`` that passes on the inputs the hook was given unless it names others."""

    def run(x: Tensor, inputs: BlockInputs) -> Tensor:
        def next_run(tokens: Tensor, block_inputs: BlockInputs | None = None) -> Tensor:
            return inner(tokens, inputs if block_inputs is None else block_inputs)

        return hook(index, x, inputs, next_run)

    return run
