"""T-GATE (Liu et al. 2024, "Faster Diffusion via Temporal Attention Decomposition"): attention outputs reused.

Before the gate step cross-attention is computed every step; at step ``gate_step - 1`` each block keeps the mean of
its two guidance halves' cross-attention output, and from ``gate_step`` on that output replaces cross-attention and
the sampler runs only the negative half without guidance (``guided``). Self-attention output is kept and reused on a
grid: computed while ``step < warm_up``, kept at ``warm_up`` and every ``sp_interval``-th step before the gate (reused
in between), kept (as the halves' mean) at the gate, then kept every ``fi_interval``-th step and reused in between.
Setting names and meanings follow the ``tgate`` package (``pipe.tgate(gate_step=..., sp_interval=..., ...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from ..block_hooks import BlockFn, BlockInputs, TokenRows
from .base import StepCache

COMPUTE, KEEP, REUSE = "compute", "keep", "reuse"


@dataclass(frozen=True)
class TGateConfig:
    """tgate's settings (same names and meaning); steps are 0-based sampling steps."""

    gate_step: int = 10  # cross-attention computed in steps < gate_step, reused after
    sp_interval: int = 5  # self-attention recomputed every sp_interval steps before the gate (semantics planning)
    fi_interval: int = 1  # self-attention recomputed every fi_interval steps after the gate (fidelity improving)
    warm_up: int = 2  # self-attention always computed in steps < warm_up

    def __post_init__(self) -> None:
        if self.gate_step < 1:
            raise ValueError(f"T-GATE gate_step must be >= 1, got {self.gate_step}")
        if self.sp_interval < 1 or self.fi_interval < 1:
            raise ValueError(f"T-GATE intervals must be >= 1, got sp {self.sp_interval}, fi {self.fi_interval}")
        if self.warm_up < 0:
            raise ValueError(f"T-GATE warm_up must be >= 0, got {self.warm_up}")


@dataclass(frozen=True)
class StepPlan:
    """What one step does with each attention: COMPUTE, KEEP (compute and store) or REUSE (the stored output)."""

    cross: str
    self_: str
    mean_of_halves: bool  # stored outputs are the mean of the two guidance halves (the gate step)


def step_plan(config: TGateConfig, step: int) -> StepPlan:
    """T-GATE's schedule for sampling step ``step`` (0-based)."""
    gate = config.gate_step - 1
    if step < gate:
        if step < config.warm_up:
            sa = COMPUTE
        else:
            sa = KEEP if step == config.warm_up or step % config.sp_interval == 0 else REUSE
        return StepPlan(COMPUTE, sa, False)
    if step == gate:
        return StepPlan(KEEP, KEEP, True)
    return StepPlan(REUSE, KEEP if step % config.fi_interval == 0 else REUSE, False)


class TGate(StepCache):
    """T-GATE state for one generation at a time: per-block stored attention outputs (B, N, C). Its block hook hands
    each block an attention hook that reuses, keeps or computes that block's attention outputs."""

    def __init__(self, config: TGateConfig) -> None:
        self.config = config
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self._stored: dict[str, list[Tensor | None]] = {"self": [], "cross": []}  # per block, reused on REUSE
        self._kept: dict[str, list[Tensor | None]] = {"self": [], "cross": []}  # per block, kept this step
        self._plan = StepPlan(COMPUTE, COMPUTE, False)

    def guided(self, step: int) -> bool:
        return step < self.config.gate_step

    def forward_kwargs(self, depth: int) -> dict:
        if len(self._stored["self"]) != depth:
            self._stored = {"self": [None] * depth, "cross": [None] * depth}
        self._kept = {"self": [None] * depth, "cross": [None] * depth}
        self._plan = step_plan(self.config, self.step)
        reused = {kind: self._reused(kind) for kind in ("self", "cross")}
        stats = self.stats
        stats.blocks_total += depth
        stats.blocks_computed += depth
        stats.self_attention_reused += reused["self"]
        stats.cross_attention_reused += reused["cross"]
        if reused["self"] or reused["cross"]:
            stats.reused_steps.append(self.step)
        return {"block_hooks": [self.hook]}

    def hook(self, index: int, x: Tensor, inputs: BlockInputs, run: BlockFn) -> Tensor:
        """The ``BlockHook``: block ``index`` with T-GATE's attention hook for this step."""
        depth = len(self._kept["self"])
        if not 0 <= index < depth:
            raise ValueError(f"T-GATE: block {index} of a forward prepared for {depth} blocks (forward_kwargs(depth))")
        return run(x, inputs._replace(attention=partial(self.attend, index)))

    def attend(self, index: int, kind: str, rows: TokenRows, compute: Callable[[], Tensor]) -> Tensor:
        """The ``AttentionHook`` of block ``index``: the stored output (REUSE), or ``compute()``'s, kept (KEEP)."""
        action, stored = self._action(kind), self._stored[kind][index]
        if action == REUSE and stored is not None:
            return stored[rows.index]
        out = compute()
        if action == KEEP:
            kept = self._kept[kind]
            if rows.whole:
                kept[index] = out
            else:
                if kept[index] is None:
                    kept[index] = out.new_empty(rows.shape)
                kept[index][rows.index] = out
        return out

    def _action(self, kind: str) -> str:
        return self._plan.self_ if kind == "self" else self._plan.cross

    def _reused(self, kind: str) -> int:
        """Blocks that reuse their stored ``kind`` attention output this step."""
        return sum(s is not None for s in self._stored[kind]) if self._action(kind) == REUSE else 0

    def end_step(self) -> None:
        for kind, kept in self._kept.items():
            for i, out in enumerate(kept):
                if out is not None:
                    self._stored[kind][i] = _mean_of_halves(out) if self._plan.mean_of_halves else out
        self._kept = {kind: [None] * len(kept) for kind, kept in self._kept.items()}


def _mean_of_halves(output: Tensor) -> Tensor:
    """(2B, N, C) output of a guided call -> (B, N, C) mean of its negative and positive halves."""
    if output.shape[0] % 2:
        raise ValueError(
            f"T-GATE: the gate step needs a guided batch (negative and positive halves), got batch {output.shape[0]}"
        )
    negative, positive = output.chunk(2)
    return (negative + positive) / 2


def negative_rows_only(
    run: Callable[..., Tensor], args: Sequence[Tensor | None], negative: slice, copies: int
) -> Tensor:
    """T-GATE's steps after its gate, which do not guide: ``run`` on the negative rows of a guided batch's arguments
    only (None stays None), its (B, ...) output repeated ``copies`` times along the batch (one per guidance half the
    caller batched), so that guidance of the copies gives the negative prediction."""
    out = run(*(None if a is None else a[negative] for a in args))
    return torch.cat([out] * copies)
