"""T-GATE (Liu et al. 2024, "Faster Diffusion via Temporal Attention Decomposition"): attention outputs reused.

Before the gate step cross-attention is computed every step; at step ``gate_step - 1`` each block keeps the mean of
its two guidance halves' cross-attention output, and from ``gate_step`` on that output replaces cross-attention and
the sampler runs only the negative half without guidance (``guided``). Self-attention output is kept and reused on a
grid: computed while ``step < warm_up``, kept at ``warm_up`` and every ``sp_interval``-th step before the gate (reused
in between), kept (as the halves' mean) at the gate, then kept every ``fi_interval``-th step and reused in between.
Setting names and meanings follow the ``tgate`` package (``pipe.tgate(gate_step=..., sp_interval=..., ...)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..attention import AttentionReuse
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
    """T-GATE state for one generation at a time: per-block stored attention outputs (B, N, C)."""

    def __init__(self, config: TGateConfig) -> None:
        self.config = config
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self._self: list[Tensor | None] = []
        self._cross: list[Tensor | None] = []
        self._calls: list[AttentionReuse] = []

    def guided(self, step: int) -> bool:
        return step < self.config.gate_step

    def forward_kwargs(self, depth: int) -> dict:
        if len(self._self) != depth:
            self._self, self._cross = [None] * depth, [None] * depth
        plan = step_plan(self.config, self.step)
        self._plan = plan
        self._calls = [
            AttentionReuse(
                self_out=self._self[i] if plan.self_ == REUSE else None,
                cross_out=self._cross[i] if plan.cross == REUSE else None,
                keep_self=plan.self_ == KEEP,
                keep_cross=plan.cross == KEEP,
            )
            for i in range(depth)
        ]
        stats = self.stats
        stats.blocks_total += depth
        stats.blocks_computed += depth
        stats.self_attention_reused += sum(r.self_out is not None for r in self._calls)
        stats.cross_attention_reused += sum(r.cross_out is not None for r in self._calls)
        if any(r.self_out is not None or r.cross_out is not None for r in self._calls):
            stats.reused_steps.append(self.step)
        return {"attention_reuse": self._calls}

    def end_step(self) -> None:
        for i, call in enumerate(self._calls):
            if call.keep_self:
                self._self[i] = _mean_of_halves(call.self_out) if self._plan.mean_of_halves else call.self_out
            if call.keep_cross:
                self._cross[i] = _mean_of_halves(call.cross_out) if self._plan.mean_of_halves else call.cross_out
        self._calls = []


def _mean_of_halves(output: Tensor) -> Tensor:
    """(2B, N, C) output of a guided call -> (B, N, C) mean of its negative and positive halves."""
    if output.shape[0] % 2:
        raise ValueError(
            f"T-GATE: the gate step needs a guided batch (negative and positive halves), got batch {output.shape[0]}"
        )
    negative, positive = output.chunk(2)
    return (negative + positive) / 2
