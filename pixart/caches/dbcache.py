"""DBCache (Dual Block Cache, cache-dit): reuse the middle blocks' residual when the first blocks barely changed.

Every step runs the first ``Fn_compute_blocks`` blocks and measures how much their residual (output minus the
input of block 0) moved since the last fully computed step: ``mean|R_prev - R| / mean|R_prev|`` over the whole batch
(both guidance halves). Below ``residual_diff_threshold`` the middle blocks are skipped and their residual from the
last computed step is added instead; the last ``Bn_compute_blocks`` blocks always run. First-block cache (FBCache) is
``Fn_compute_blocks=1, Bn_compute_blocks=0``. Setting names and meanings follow cache-dit's ``DBCacheConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..block_hooks import BlockFn, BlockInputs
from .base import StepCache


@dataclass(frozen=True)
class DBCacheConfig:
    """cache-dit's DBCache settings (same names and meaning)."""

    Fn_compute_blocks: int = 8  # noqa: N815  first blocks always computed; their residual decides
    Bn_compute_blocks: int = 0  # noqa: N815  last blocks always computed, after the cached residual
    residual_diff_threshold: float = 0.08  # reuse below this relative L1 diff; <= 0 never, >= 1 always reuses
    max_warmup_steps: int = 8  # steps 0, warmup_interval, ... below this are always computed
    warmup_interval: int = 1  # spacing of the always-computed warmup steps
    max_cached_steps: int = -1  # at most this many reused steps per generation (-1: no limit)
    max_continuous_cached_steps: int = -1  # at most this many reused steps in a row (-1: no limit)
    max_accumulated_residual_diff_threshold: float | None = None  # stop reusing once the summed diffs reach this

    def __post_init__(self) -> None:
        if self.Fn_compute_blocks < 1:
            raise ValueError(f"DBCache Fn_compute_blocks must be >= 1, got {self.Fn_compute_blocks}")
        if self.Bn_compute_blocks < 0:
            raise ValueError(f"DBCache Bn_compute_blocks must be >= 0, got {self.Bn_compute_blocks}")
        if self.max_warmup_steps < 0 or self.warmup_interval < 1:
            raise ValueError(
                f"DBCache needs max_warmup_steps >= 0 and warmup_interval >= 1, got {self.max_warmup_steps}, "
                f"{self.warmup_interval}"
            )


FIRST_BLOCK_CACHE = DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0)


class DBCache(StepCache):
    """DBCache state for one generation at a time; its block hook wraps every block."""

    def __init__(self, config: DBCacheConfig) -> None:
        self.config = config
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self._input: Tensor | None = None  # (B, N, C) input of block 0 in this step
        self._middle_input: Tensor | None = None  # (B, N, C) input of the first middle block in this step
        self._fn_residual: Tensor | None = None  # first blocks' residual of the last computed step
        self._middle_residual: Tensor | None = None  # middle blocks' residual of the last computed step
        self._reuse = False  # this step skips the middle blocks
        self._continuous = 0  # reused steps in a row up to the previous step
        self._accumulated_diff = 0.0

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        reused = self.stats.reused_steps
        if not reused or reused[-1] != step - 1:
            self._continuous = 0

    def forward_kwargs(self, depth: int) -> dict:
        c = self.config
        if c.Fn_compute_blocks + c.Bn_compute_blocks > depth:
            raise ValueError(
                f"DBCache Fn_compute_blocks {c.Fn_compute_blocks} + Bn_compute_blocks {c.Bn_compute_blocks} exceed "
                f"the model's {depth} blocks"
            )
        self._depth = depth
        self.stats.blocks_total += depth
        return {"block_hooks": [self.hook]}

    def end_step(self) -> None:
        self._reuse = False

    def hook(self, index: int, x: Tensor, inputs: BlockInputs, run: BlockFn) -> Tensor:
        """The ``BlockHook``: runs, skips or closes the middle blocks of the current step."""
        first, middle_end = self.config.Fn_compute_blocks, self._depth - self.config.Bn_compute_blocks
        if index == 0:
            self._input = x
        if first <= index < middle_end:
            if self._reuse:
                return self._middle_residual + x if index == middle_end - 1 else x
            if index == first:
                self._middle_input = x
        x = run(x)
        self.stats.blocks_computed += 1
        if index == first - 1:
            self._decide(x - self._input)
            self._input = None
        if index == middle_end - 1 and first <= index and not self._reuse:
            self._middle_residual = x - self._middle_input
            self._middle_input = None
        return x

    def _decide(self, fn_residual: Tensor) -> None:
        """After the first blocks: reuse the middle residual this step, or compute and remember this residual."""
        self._reuse = self._can_reuse(fn_residual)
        if self._reuse:
            self.stats.reused_steps.append(self.step)
            self._continuous += 1
        else:
            self._fn_residual = fn_residual

    def _can_reuse(self, fn_residual: Tensor) -> bool:
        c, step = self.config, self.step
        if step in range(0, c.max_warmup_steps, c.warmup_interval):
            return False
        if 0 <= c.max_cached_steps <= len(self.stats.reused_steps):
            return False
        if 0 <= c.max_continuous_cached_steps <= self._continuous:
            return False
        limit = c.max_accumulated_residual_diff_threshold
        if limit is not None and limit > 0 and self._accumulated_diff >= limit:
            return False
        threshold, previous = c.residual_diff_threshold, self._fn_residual
        if threshold <= 0 or previous is None:
            return False
        if threshold >= 1:
            self.stats.residual_diffs[step] = -1.0
            return True
        if previous.shape != fn_residual.shape:
            self.stats.residual_diffs[step] = -2.0
            return False
        diff = ((previous - fn_residual).abs().mean() / previous.abs().mean()).item()
        self.stats.residual_diffs[step] = diff
        self._accumulated_diff += max(diff, 0.0)
        return diff < threshold
