"""Discrete-time noise schedules of PixArt checkpoints and the timestep lists their samplers use.

Notation: ``t`` an integer training timestep in 0..T-1 (T = 1000), ``alpha_bar(t)`` the cumulative product of
(1 - beta), the variance-preserving (VP) sample ``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise``, and the
variance-exploding (VE) noise level ``sigma(t) = sqrt((1 - alpha_bar) / alpha_bar)`` (ComfyUI's sigmas).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PREDICTIONS = ("epsilon", "v_prediction")
SPACINGS = ("linspace", "leading", "trailing")
# alpha_bar given to the last timestep of a zero-terminal-SNR schedule, so that its sigma is finite: the smallest
# positive float16 subnormal, the value diffusers' DPM-Solver uses (ComfyUI's zsnr uses 4.8973e-08 instead).
ZERO_SNR_TERMINAL_ALPHA_BAR = 2.0**-24


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule of a checkpoint: linear betas (every PixArt model), optionally rescaled to zero
    terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1)."""

    prediction: str = "epsilon"  # what the model outputs: "epsilon" (noise) or "v_prediction" (velocity)
    zero_terminal_snr: bool = False  # betas rescaled so that alpha_bar(T-1) = 0
    beta_start: float = 0.0001  # beta at t = 0
    beta_end: float = 0.02  # beta at t = T-1
    train_steps: int = 1000  # T

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"NoiseSchedule.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(
                f"NoiseSchedule: need 0 < beta_start < beta_end < 1, got {self.beta_start} and {self.beta_end}"
            )
        if self.train_steps < 2:
            raise ValueError(f"NoiseSchedule.train_steps must be >= 2, got {self.train_steps}")

    def alphas_cumprod(self) -> Tensor:
        """(T,) float64 alpha_bar(t); exactly 0 at T-1 for a zero-terminal-SNR schedule."""
        betas = torch.linspace(self.beta_start, self.beta_end, self.train_steps, dtype=torch.float64)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        if self.zero_terminal_snr:
            root = alpha_bar.sqrt()
            first, last = root[0].item(), root[-1].item()
            alpha_bar = ((root - last) * (first / (first - last))) ** 2
        return alpha_bar

    def sampling_alphas_cumprod(self) -> Tensor:
        """alpha_bar(t) as samplers use it: the zero terminal value replaced by ``ZERO_SNR_TERMINAL_ALPHA_BAR``."""
        alpha_bar = self.alphas_cumprod()
        if self.zero_terminal_snr:
            alpha_bar[-1] = ZERO_SNR_TERMINAL_ALPHA_BAR
        return alpha_bar

    def sigmas(self) -> Tensor:
        """(T,) float64 VE noise levels sigma(t) = sqrt((1 - alpha_bar) / alpha_bar), all finite."""
        alpha_bar = self.sampling_alphas_cumprod()
        return ((1.0 - alpha_bar) / alpha_bar).sqrt()


def spaced_timesteps(steps: int, spacing: str, train_steps: int = 1000, steps_offset: int = 0) -> list[int]:
    """``steps`` descending training timesteps, spaced as diffusers' multistep solvers space them.

    linspace: ``round(linspace(0, T-1, steps+1))`` reversed, without the final 0 (the PixArt reference).
    leading:  multiples of ``T // (steps+1)`` reversed, without 0, plus ``steps_offset``.
    trailing: ``round(T - i T / steps) - 1``: starts at T-1 (zero-terminal-SNR models; ComfyUI's "simple").
    """
    if steps < 1:
        raise ValueError(f"spaced_timesteps: steps must be >= 1, got {steps}")
    if spacing == "linspace":
        points = torch.linspace(0, train_steps - 1, steps + 1, dtype=torch.float64).round()
        return [int(v) for v in points.flip(0)[:-1]]
    if spacing == "leading":
        ratio = train_steps // (steps + 1)
        return [i * ratio + steps_offset for i in range(steps, 0, -1)]
    if spacing == "trailing":
        ratio = train_steps / steps
        return [int(round(train_steps - i * ratio)) - 1 for i in range(steps)]
    raise ValueError(f"spaced_timesteps: spacing must be one of {SPACINGS}, got {spacing!r}")


def lcm_timesteps(steps: int, original_steps: int = 50, train_steps: int = 1000) -> list[int]:
    """The Latent Consistency Model schedule: ``steps`` evenly indexed picks, from the top, of the distillation
    schedule ``k·i - 1`` (i = 1..original_steps, k = T // original_steps). 4 of 50 -> 999, 759, 499, 259."""
    if not 1 <= steps <= original_steps:
        raise ValueError(f"lcm_timesteps: steps must be in 1..{original_steps} (the original steps), got {steps}")
    k = train_steps // original_steps
    origin = [k * i - 1 for i in range(original_steps, 0, -1)]  # descending
    return [origin[(i * original_steps) // steps] for i in range(steps)]


def lcm_boundary(timestep: int, timestep_scaling: float = 10.0, sigma_data: float = 0.5) -> tuple[float, float]:
    """LCM boundary-condition scalings (c_skip, c_out) at a training timestep: the consistency function is
    ``c_skip x_t + c_out x_0_pred``, so that it is the identity at t = 0 (Song et al. 2023, Consistency Models §3)."""
    scaled = timestep * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out
