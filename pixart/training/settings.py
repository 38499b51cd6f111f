"""Training settings: one frozen dataclass, and presets named after the reference configs (okotaku/pixartengine).

``pixart_sigma_512_pokemon``: full fine-tune of PixArt-Sigma-XL-2-512-MS (``configs/pixart_sigma/``): AdamW lr 2e-6,
weight decay 3e-2, gradient norm clipped to 0.01, bf16 mixed precision, batch 4, epsilon MSE plus the learned-sigma
VB term. ``pixart_sigma_512_lora``: the same model with a PEFT LoRA r=32, alpha=32 on ``to_q, to_k, to_v,
to_out.0`` of self- and cross-attention (``_base_/models/pixart_sigma_512_lora.py``), AdamW lr 1e-4, weight decay
3e-2, clip 0.01 (``_base_/schedules/diffusion_1k.py``), bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..errors import PixArtError

MODES = ("full", "lora")
PRECISIONS = ("bf16", "fp32")
LORA_TARGET_SETS = ("attention", "all_linear")
MAX_LORA_RANK = 4096


class TrainingError(PixArtError):
    """A training setting, input or output path that cannot be used; the message names it."""


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one training run."""

    mode: str = "full"  # "full": every transformer weight; "lora": low-rank adapters only
    learning_rate: float = 2e-6  # AdamW lr after warm-up
    weight_decay: float = 3e-2  # AdamW decoupled weight decay
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.999  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon
    max_grad_norm: float | None = 0.01  # clip the global L2 gradient norm to this; None: no clipping
    warmup_steps: int = 0  # lr rises linearly from 0 over these steps (diffusers' constant_with_warmup)
    batch_size: int = 4  # B, samples per step (the caller batches the data)
    vb_loss: bool = True  # add the learned-sigma VB term (models with out_channels = 2 C_in)
    precision: str = "bf16"  # "bf16": bf16 autocast with fp32 trainable weights; "fp32": everything fp32
    gradient_checkpointing: bool = False  # recompute each transformer block in the backward pass
    seed: int = 0  # seeds LoRA init, noise and timesteps: the same seed and data repeat a run exactly
    lora_rank: int = 32  # r
    lora_alpha: float = 32.0  # the update is alpha / r * B A
    lora_targets: str = "attention"  # "attention" (to_q/to_k/to_v/to_out.0 of both attentions) or "all_linear"

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("lora_targets", self.lora_targets, LORA_TARGET_SETS)
        _number("learning_rate", self.learning_rate, low=0.0, open_low=True)
        _number("weight_decay", self.weight_decay, low=0.0)
        _number("beta1", self.beta1, low=0.0, high=1.0)
        _number("beta2", self.beta2, low=0.0, high=1.0)
        _number("eps", self.eps, low=0.0, open_low=True)
        _number("lora_alpha", self.lora_alpha, low=0.0, open_low=True)
        if self.max_grad_norm is not None:
            _number("max_grad_norm", self.max_grad_norm, low=0.0, open_low=True)
        _integer("warmup_steps", self.warmup_steps, 0, 10**9)
        _integer("batch_size", self.batch_size, 1, 10**6)
        _integer("lora_rank", self.lora_rank, 1, MAX_LORA_RANK)
        _integer("seed", self.seed, 0, 2**63 - 1)

    def replace(self, **changes) -> TrainSettings:
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TrainingError(f"unknown training settings {unknown}; known: {[f.name for f in fields(self)]}")
        return replace(self, **changes)


def _choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TrainingError(f"training setting {name}: expected one of {allowed}, got {value!r}")


def _number(name: str, value, low: float, high: float = math.inf, open_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value < high
    if not ok:
        bound = f"> {low}" if open_low else f">= {low}"
        limit = "" if high == math.inf else f" and < {high}"
        raise TrainingError(f"training setting {name}: expected a finite number {bound}{limit}, got {value!r}")


def _integer(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise TrainingError(f"training setting {name}: expected an integer in {low}..{high}, got {value!r}")


PRESETS: dict[str, TrainSettings] = {
    "pixart_sigma_512_pokemon": TrainSettings(),
    "pixart_sigma_512_lora": TrainSettings(mode="lora", learning_rate=1e-4, lora_rank=32, lora_alpha=32.0),
}


def preset(name: str, **changes) -> TrainSettings:
    """The settings of a reference config (``PRESETS``), optionally with some fields changed."""
    if name not in PRESETS:
        raise TrainingError(f"training preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]
