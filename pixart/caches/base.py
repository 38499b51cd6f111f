"""What every step cache shares: the per-generation state a sampler drives step by step, and its statistics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass
class CacheStats:
    """What one generation computed and what it reused."""

    steps: int = 0  # model calls (sampling steps) seen
    reused_steps: list[int] = field(default_factory=list)  # steps that reused cached work (0-based)
    blocks_computed: int = 0  # block forwards run, summed over steps
    blocks_total: int = 0  # block forwards an uncached model would have run
    self_attention_reused: int = 0  # block calls that reused a self-attention output (T-GATE)
    cross_attention_reused: int = 0  # block calls that reused a cross-attention output (T-GATE)
    residual_diffs: dict[int, float] = field(default_factory=dict)  # step -> relative L1 diff (DBCache)

    def summary(self) -> str:
        """One log line: steps computed vs reused, and the blocks and attentions skipped."""
        reused = len(self.reused_steps)
        text = f"{self.steps - reused} steps computed, {reused} reused {self.reused_steps}"
        text += f"; blocks {self.blocks_computed}/{self.blocks_total}"
        if self.self_attention_reused or self.cross_attention_reused:
            text += f"; attention reused: self {self.self_attention_reused}, cross {self.cross_attention_reused}"
        return text


class StepCache(ABC):
    """Sampling-time state of a training-free step cache.

    A sampler calls ``begin_step(step)`` before each model call (step 0 starts a new generation and resets the
    state), runs the model with ``forward_kwargs(depth)`` added to its arguments and calls ``end_step()`` after it.
    ``guided(step)`` says whether that step runs both classifier-free-guidance halves (T-GATE runs only the
    negative half after its gate step).
    """

    def __init__(self) -> None:
        self.step = -1
        self.stats = CacheStats()

    def reset(self) -> None:
        """Forget everything cached: a new generation."""
        self.step = -1
        self.stats = CacheStats()

    def begin_step(self, step: int) -> None:
        """Before the model call of sampling step ``step`` (0-based); step 0 resets."""
        if step == 0:
            self.reset()
        elif step != self.step + 1:
            raise ValueError(f"step cache: step {step} follows step {self.step}; steps must count up from 0")
        self.step = step
        self.stats.steps += 1

    def guided(self, step: int) -> bool:
        """Whether step ``step`` runs both guidance halves (when the sampler guides at all)."""
        return True

    @abstractmethod
    def forward_kwargs(self, depth: int) -> dict:
        """Keyword arguments for ``PixArtTransformer.forward`` in this step (``block_hooks``)
        for a model of ``depth`` blocks."""

    @abstractmethod
    def end_step(self) -> None:
        """After the model call of the current step."""
