"""Samplers of the PixArt few-step and v-prediction checkpoints, in plain PyTorch on VP samples.

A ``Denoiser`` is ``f(x_t, t) -> prediction``: ``x_t`` (B, C_in, H, W) a VP sample, ``t`` (B,) float training
timesteps, the prediction (B, C_in, H, W) epsilon or v as the ``NoiseSchedule`` says (guidance already applied).
Every sampler starts from ``noise``, a unit-variance (B, C_in, H, W) tensor, and returns the clean latent x_0.
Arithmetic runs in float64 scalars on the sample's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .schedules import NoiseSchedule, lcm_boundary

Denoiser = Callable[[Tensor, Tensor], Tensor]
X0Model = Callable[[Tensor, int], Tensor]  # (sample at step i, i) -> (B, C_in, H, W) x_0 estimate, guidance applied


def guidance(negative: Tensor, positive: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ``negative + scale (positive - negative)`` of two (B, ...)
    predictions, diffusers' and ComfyUI's rule."""
    return negative + scale * (positive - negative)


def _call(denoise: Denoiser, x: Tensor, timestep: int) -> Tensor:
    return denoise(x, torch.full((x.shape[0],), float(timestep), device=x.device))


def predict_x0(schedule: NoiseSchedule, x: Tensor, prediction: Tensor, alpha_bar: float) -> Tensor:
    """x_0 from a VP sample and the model's epsilon or v at a timestep with cumulative alpha ``alpha_bar``."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if schedule.prediction == "v_prediction":
        return a * x - s * prediction
    return (x - s * prediction) / a


def sample_one_step(
    denoise: Denoiser, noise: Tensor, schedule: NoiseSchedule, timestep: int, clip_sample: float | None = None
) -> Tensor:
    """One-step distilled models (PixArt-alpha-DMD, Nitro): the x_0 prediction at ``timestep`` from unit-variance
    noise, optionally clamped to [-clip_sample, clip_sample] (diffusers DDPMScheduler's ``clip_sample``)."""
    alpha_bar = schedule.alphas_cumprod()[timestep].item()
    return one_step(lambda x, i: predict_x0(schedule, x, _call(denoise, x, timestep), alpha_bar), noise, clip_sample)


def one_step(x0_model: X0Model, x: Tensor, clip_sample: float | None = None) -> Tensor:
    """The one-step solver on an x_0 model: ``x0_model(x, 0)``, optionally clamped to [-clip_sample, clip_sample].
    ``x`` is the start sample in whatever form ``x0_model`` takes (ComfyUI's samplers pass its VE form)."""
    x0 = x0_model(x, 0)
    return x0 if clip_sample is None else x0.clamp(-clip_sample, clip_sample)


def sample_lcm(
    denoise: Denoiser,
    noise: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    generator: torch.Generator | None = None,
    timestep_scaling: float = 10.0,
) -> Tensor:
    """Latent Consistency Model multistep sampling (``lcm_steps``) of a ``Denoiser``; the fresh noise between steps
    is drawn by ``torch.randn(shape, generator=generator)``, one draw per step after the first, in the sample's dtype
    and on ``generator``'s device (CPU when None)."""
    alpha_bar = schedule.alphas_cumprod()

    def x0_model(x: Tensor, i: int) -> Tensor:
        t = timesteps[i]
        return predict_x0(schedule, x, _call(denoise, x, t), alpha_bar[t].item())

    def draw(x: Tensor) -> Tensor:
        device = generator.device if generator else None
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)

    alpha_bars = [alpha_bar[t].item() for t in timesteps]
    return lcm_steps(x0_model, noise, timesteps, alpha_bars, draw, timestep_scaling)


def lcm_steps(
    x0_model: X0Model,
    noise: Tensor,
    timesteps: Sequence[int],
    alpha_bars: Sequence[float],
    draw: Callable[[Tensor], Tensor],
    timestep_scaling: float = 10.0,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, Alg. 1) on an x_0 model, in VP form.

    Each step maps x_t to ``c_skip x_t + c_out x_0`` (``lcm_boundary``); between steps that estimate is noised again
    to the next timestep with ``draw(x)``, fresh unit-variance noise shaped like x.

    Args:
        noise: (B, C_in, H, W) unit-variance start sample; timesteps: descending training timesteps;
        alpha_bars: alpha_bar at each of them; callback: ``callback(i, x_t, estimate)`` after each step's estimate.
    Returns:
        x_0 (B, C_in, H, W).
    """
    x = noise
    for i, t in enumerate(timesteps):
        c_skip, c_out = lcm_boundary(t, timestep_scaling)
        denoised = c_out * x0_model(x, i) + c_skip * x
        if callback is not None:
            callback(i, x, denoised)
        if i == len(timesteps) - 1:
            return denoised
        a_next = alpha_bars[i + 1]
        x = math.sqrt(a_next) * denoised + math.sqrt(1.0 - a_next) * draw(x)
    raise ValueError("sample_lcm: timesteps is empty")


def _vp_coefficients(sigma: float) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, lambda_t) of a VE sigma; lambda = log(alpha/sigma) is +inf at sigma 0."""
    alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
    sigma_t = sigma * alpha
    return alpha, sigma_t, (math.inf if sigma == 0 else math.log(alpha) - math.log(sigma_t))


def sample_dpmpp_2m(
    denoise: Denoiser,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    end_timestep: int | None = None,
) -> Tensor:
    """DPM-Solver++ (2M, midpoint), data prediction (Lu et al. 2022, Alg. 2), as the PixArt pipelines run it.

    The first step is first order (no history), so is a final step to the clean latent. ``end_timestep`` stops at
    that timestep's noise level instead of at x_0 (stage 1 of a two-stage run); a later call continues from there
    with a fresh history, as a second pipeline (or a second KSamplerAdvanced) does.

    Args:
        x: (B, C_in, H, W) VP sample at ``timesteps[0]`` (unit-variance noise for a full run).
        timesteps: descending training timesteps to evaluate the model at.
    Returns:
        The VP sample at ``end_timestep``, or x_0.
    """
    sigma_table = schedule.sigmas()
    alpha_bar = schedule.sampling_alphas_cumprod()
    sigmas = [sigma_table[t].item() for t in timesteps]
    sigmas.append(0.0 if end_timestep is None else sigma_table[end_timestep].item())
    previous: tuple[Tensor, float] | None = None  # (x_0 estimate, lambda) of the last step
    for i, t in enumerate(timesteps):
        x0 = predict_x0(schedule, x, _call(denoise, x, t), alpha_bar[t].item())
        _, sigma_s, lambda_s = _vp_coefficients(sigmas[i])
        alpha_t, sigma_t, lambda_t = _vp_coefficients(sigmas[i + 1])
        decay = -math.expm1(-(lambda_t - lambda_s))  # 1 - exp(-h)
        final = sigmas[i + 1] == 0
        if previous is None or final:
            update = x0
        else:
            x0_last, lambda_last = previous
            r = (lambda_s - lambda_last) / (lambda_t - lambda_s)
            update = x0 + (0.5 / r) * (x0 - x0_last)
        x = (sigma_t / sigma_s) * x + (alpha_t * decay) * update
        previous = (x0, lambda_s)
    return x
