"""Discrete-time noise schedules of PixArt checkpoints and the timestep lists their samplers use.

Notation: ``t`` an integer training timestep in 0..T-1 (T = 1000), ``alpha_bar(t)`` the cumulative product of
(1 - beta), the variance-preserving (VP) sample ``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise``, and the
variance-exploding (VE) noise level ``sigma(t) = sqrt((1 - alpha_bar) / alpha_bar)`` (ComfyUI's sigmas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ScheduleError

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
        validate_schedule(str(self), self.train_steps, sigmas=self.sigmas(), terminal_standin=self.zero_terminal_snr)

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


def validate_schedule(
    source: str,
    train_steps: int,
    timesteps: Sequence[int] = (),
    sigmas: Tensor | None = None,
    terminal_standin: bool = False,
) -> None:
    """The one check every schedule and timestep list built here passes; ScheduleError naming ``source`` otherwise.

    sigmas: (T,) VE noise levels of the training timesteps: finite, > 0 and strictly increasing in float32 (the
        precision ComfyUI samples in); with ``terminal_standin`` the last one is a zero-terminal-SNR stand-in
        (``ZERO_SNR_TERMINAL_ALPHA_BAR``) that only needs to be finite.
    timesteps: the steps asked, descending: integers in 0..T-1, never repeated (a zero-length step), and, when
        ``sigmas`` is given, with strictly decreasing noise levels.
    """
    if sigmas is not None:
        table = sigmas.detach().to(torch.float32)
        if table.shape != (train_steps,):
            raise ScheduleError(f"{source}: {tuple(table.shape)} noise levels, expected {train_steps}")
        bad = (~torch.isfinite(table) | (table <= 0)).nonzero()
        if len(bad):
            t = int(bad[0])
            raise ScheduleError(
                f"{source}: sigma at timestep {t} is {table[t].item()} in float32; the betas give a noise level "
                "that is zero or overflows (expected finite and > 0 at every timestep)"
            )
        ordered = table[:-1] if terminal_standin else table
        flat = (ordered.diff() <= 0).nonzero()
        if len(flat):
            t = int(flat[0])
            raise ScheduleError(
                f"{source}: sigma does not grow from timestep {t} to {t + 1} in float32 ({ordered[t].item()} then "
                f"{ordered[t + 1].item()}); the betas are too small or too close to tell the timesteps apart"
            )
    previous = None
    for t in timesteps:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < train_steps:
            raise ScheduleError(f"{source}: timestep {t!r} is outside 0..{train_steps - 1} (the model's own range)")
        if previous is not None and t >= previous:
            raise ScheduleError(f"{source}: timestep {t} follows {previous}; expected strictly descending timesteps")
        if sigmas is not None and previous is not None and table[t] >= table[previous]:
            raise ScheduleError(
                f"{source}: the step from timestep {previous} to {t} does not lower the noise "
                f"({table[previous].item()} to {table[t].item()}); use fewer steps"
            )
        previous = t


def max_spaced_steps(spacing: str, train_steps: int = 1000, steps_offset: int = 0) -> int:
    """The most steps ``spaced_timesteps`` gives without repeating a timestep or leaving 0..T-1: T-1 for linspace
    (the rounded points lie >= 1 apart), T for trailing; for leading the largest n with ``T // (n+1) >= 1`` and
    ``n (T // (n+1)) + steps_offset <= T-1`` (T-1 when the offset is 0)."""
    if spacing == "linspace":
        return train_steps - 1
    if spacing == "trailing":
        return train_steps
    if spacing == "leading":
        steps = train_steps - 1
        while steps > 0 and steps * (train_steps // (steps + 1)) + steps_offset > train_steps - 1:
            steps -= 1
        return steps
    raise ValueError(f"spaced_timesteps: spacing must be one of {SPACINGS}, got {spacing!r}")


def spaced_timesteps(steps: int, spacing: str, train_steps: int = 1000, steps_offset: int = 0) -> list[int]:
    """``steps`` descending training timesteps, spaced as diffusers' multistep solvers space them.

    linspace: ``round(linspace(0, T-1, steps+1))`` reversed, without the final 0 (the PixArt reference); each
              point ``i (T-1) / steps`` computed as numpy computes it, so the halves (499.5) round alike.
    leading:  multiples of ``T // (steps+1)`` reversed, without 0, plus ``steps_offset``.
    trailing: ``round(T - i T / steps) - 1``: starts at T-1 (zero-terminal-SNR models; ComfyUI's "simple").
    More than ``max_spaced_steps`` steps is a ScheduleError (diffusers would repeat a timestep: a zero-length step).
    """
    if steps < 1:
        raise ValueError(f"spaced_timesteps: steps must be >= 1, got {steps}")
    limit = max_spaced_steps(spacing, train_steps, steps_offset)
    source = f"{spacing} spacing of {steps} steps over {train_steps} training timesteps"
    if steps > limit:
        raise ScheduleError(f"{source}: repeats a timestep; at most {limit} steps are distinct")
    if spacing == "linspace":  # i (T-1)/steps in float64, rounded half to even, as numpy's linspace().round()
        step = (train_steps - 1) / steps
        timesteps = [train_steps - 1] + [round(i * step) for i in range(steps - 1, 0, -1)]
    elif spacing == "leading":
        ratio = train_steps // (steps + 1)
        timesteps = [i * ratio + steps_offset for i in range(steps, 0, -1)]
    else:
        ratio = train_steps / steps
        timesteps = [int(round(train_steps - i * ratio)) - 1 for i in range(steps)]
    validate_schedule(source, train_steps, timesteps)
    return timesteps


def dpm_solver_schedule(steps: int, schedule: NoiseSchedule | None = None) -> tuple[list[int], Tensor]:
    """The reference pipeline's DPM-Solver++ steps: diffusers' ``DPMSolverMultistepScheduler`` as PixArtSigmaPipeline
    configures it (``timestep_spacing`` linspace, ``final_sigmas_type`` zero): integer timesteps 999, 949, ... and
    their sigmas. Returns (timesteps, (steps + 1,) float64 sigmas ending in 0)."""
    schedule = schedule or NoiseSchedule()
    timesteps = spaced_timesteps(steps, "linspace", schedule.train_steps)
    table = schedule.sigmas()
    validate_schedule(f"DPM-Solver++ {steps} steps", schedule.train_steps, timesteps, table, schedule.zero_terminal_snr)
    return timesteps, torch.cat([table[timesteps], table.new_zeros(1)])


def lcm_timesteps(steps: int, original_steps: int = 50, train_steps: int = 1000) -> list[int]:
    """The Latent Consistency Model schedule: ``steps`` evenly indexed picks, from the top, of the distillation
    schedule ``k·i - 1`` (i = 1..original_steps, k = T // original_steps). 4 of 50 -> 999, 759, 499, 259."""
    if not 1 <= steps <= original_steps:
        raise ValueError(f"lcm_timesteps: steps must be in 1..{original_steps} (the original steps), got {steps}")
    k = train_steps // original_steps
    source = f"LCM {steps} of {original_steps} original steps over {train_steps} training timesteps"
    if k < 1:
        raise ScheduleError(f"{source}: needs at least {original_steps} training timesteps")
    origin = [k * i - 1 for i in range(original_steps, 0, -1)]  # descending
    timesteps = [origin[(i * original_steps) // steps] for i in range(steps)]
    validate_schedule(source, train_steps, timesteps)
    return timesteps


def lcm_boundary(timestep: int, timestep_scaling: float = 10.0, sigma_data: float = 0.5) -> tuple[float, float]:
    """LCM boundary-condition scalings (c_skip, c_out) at a training timestep: the consistency function is
    ``c_skip x_t + c_out x_0_pred``, so that it is the identity at t = 0 (Song et al. 2023, Consistency Models §3)."""
    scaled = timestep * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out
