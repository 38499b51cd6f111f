"""The training objective of PixArt: noise (or velocity) MSE plus the learned-sigma VB term, as the reference trains.

Reference: okotaku/pixartengine ``diffengine/models/editors/pixart/pixart.py`` (``PixArt.loss``) and diffusers'
PixArt LoRA scripts: timesteps uniform integers in [0, T), ``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise``,
MSE (mean over every element, fp32) between the first C_in output channels and the target (the noise, or
``v = sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x_0`` for v-prediction models), no SNR weighting. With a learned
variance (C_out = 2 C_in) the VB term is added, as pixartengine computes it (Nichol & Dhariwal 2021, "Improved
DDPM", §3.1): the last C_in channels v in [-1, 1] interpolate the log variance between the posterior variance
(clamped to >= 1e-20) and beta_t; the loss is the KL divergence of the true posterior q(x_{t-1} | x_t, x_0) from
the model's p(x_{t-1} | x_t) in bits (the discretised decoder NLL at t = 0), averaged over C_in, H, W, then over
the batch. As in pixartengine the mean prediction is not detached in this term (the official PixArt code detaches
it; ``detach_mean=True`` does that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..block_hooks import BlockHook
from ..sampling.schedules import NoiseSchedule
from .settings import TrainingError

MIN_POSTERIOR_VARIANCE = 1e-20  # pixartengine's clamp of the posterior variance (0 at t = 0)
PIXEL_BIN = 1.0 / 255.0  # half-width of the decoder NLL's discretisation bins
EDGE = 0.999  # beyond +-EDGE the decoder NLL uses the open-ended edge bin


class LossTerms(NamedTuple):
    """One batch's loss: ``total`` = ``mse`` + ``vb`` (``vb`` is 0 without the VB term), scalars."""

    total: Tensor
    mse: Tensor
    vb: Tensor


class ScheduleTables(NamedTuple):
    """Per-timestep values of a noise schedule, each (T,) float32 and computed in float32 the way diffusers'
    ``DDPMScheduler`` (the reference's scheduler) computes them. The VB term's decoder NLL at t = 0 and the
    posterior at t = 1 are so sensitive to rounding (1 - alpha_bar ~ 1e-4) that only the same float32 arithmetic
    gives the reference's numbers."""

    alphas_cumprod: Tensor  # alpha_bar(t)
    alphas_cumprod_prev: Tensor  # alpha_bar(t - 1), 1 at t = 0
    betas: Tensor  # beta_t
    alphas: Tensor  # 1 - beta_t


def schedule_tables(schedule: NoiseSchedule, device=None) -> ScheduleTables:
    """The float32 tables of ``schedule`` on ``device``: linear betas, their products in float32. A zero-terminal-SNR
    schedule (no VB term there) takes its float64 alpha_bar, rounded once."""
    if schedule.zero_terminal_snr:
        alpha_bar = schedule.alphas_cumprod()
        previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        betas = (1.0 - alpha_bar / previous).float()
        alpha_bar = alpha_bar.float()
    else:
        betas = torch.linspace(schedule.beta_start, schedule.beta_end, schedule.train_steps, dtype=torch.float32)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return ScheduleTables(*(v.to(device) for v in (alpha_bar, previous, betas, 1.0 - betas)))


def sample_timesteps(batch: int, schedule: NoiseSchedule, generator: torch.Generator | None = None) -> Tensor:
    """(B,) int64 timesteps, uniform on 0..T-1 (CPU; draws from ``generator``)."""
    return torch.randint(0, schedule.train_steps, (batch,), generator=generator, dtype=torch.long)


def _per_sample(table: Tensor, timesteps: Tensor) -> Tensor:
    """table[t] as (B, 1, 1, 1)."""
    return table[timesteps.to(table.device)].view(-1, 1, 1, 1)


def add_noise(latents: Tensor, noise: Tensor, timesteps: Tensor, tables: ScheduleTables) -> Tensor:
    """x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise; all (B, C_in, H, W)."""
    alpha_bar = _per_sample(tables.alphas_cumprod, timesteps)
    return alpha_bar.sqrt() * latents + (1.0 - alpha_bar).sqrt() * noise


def prediction_target(
    latents: Tensor, noise: Tensor, timesteps: Tensor, tables: ScheduleTables, prediction: str
) -> Tensor:
    """What the model learns to output: the noise (epsilon) or v = sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x_0."""
    if prediction == "epsilon":
        return noise
    alpha_bar = _per_sample(tables.alphas_cumprod, timesteps)
    return alpha_bar.sqrt() * noise - (1.0 - alpha_bar).sqrt() * latents


def predicted_x0(x_t: Tensor, output: Tensor, timesteps: Tensor, tables: ScheduleTables, prediction: str) -> Tensor:
    """x_0 implied by the model's epsilon or v, per sample in float32 as the reference writes it
    (sqrt(1/alpha_bar) x_t - sqrt(1/alpha_bar - 1) epsilon); the samplers' ``predict_x0`` is the float64-scalar
    form of the same. All (B, C_in, H, W)."""
    alpha_bar = _per_sample(tables.alphas_cumprod, timesteps)
    if prediction == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1.0 - alpha_bar).sqrt() * output
    return (1.0 / alpha_bar).sqrt() * x_t - (1.0 / alpha_bar - 1.0).sqrt() * output


def _normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF used by the reference's decoder NLL."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def decoder_nll_bits(x0: Tensor, mean: Tensor, log_variance: Tensor) -> Tensor:
    """-log2 of the probability of the bin of width 2/255 around x0 under N(mean, exp(log_variance)), averaged
    per sample: (B, C_in, H, W) -> (B,)."""
    inv_std = torch.exp(-0.5 * log_variance)
    upper = _normal_cdf(inv_std * (x0 - mean + PIXEL_BIN))
    lower = _normal_cdf(inv_std * (x0 - mean - PIXEL_BIN))
    log_prob = torch.where(
        x0 < -EDGE,
        upper.clamp(min=1e-12).log(),
        torch.where(x0 > EDGE, (1.0 - lower).clamp(min=1e-12).log(), (upper - lower).clamp(min=1e-12).log()),
    )
    return -log_prob.mean(dim=(1, 2, 3)) / math.log(2.0)


def vb_bits(
    latents: Tensor,
    x_t: Tensor,
    output: Tensor,
    variance_values: Tensor,
    timesteps: Tensor,
    tables: ScheduleTables,
    prediction: str,
) -> Tensor:
    """The learned-sigma VB term per sample, in bits: (B,).

    Args:
        latents: (B, C_in, H, W) clean x_0; x_t: the noisy input; output: the model's epsilon or v;
        variance_values: (B, C_in, H, W) the model's last C_in channels; timesteps: (B,) int64.
    """
    at = (tables.alphas_cumprod, tables.alphas_cumprod_prev, tables.betas, tables.alphas)
    alpha_bar, alpha_bar_prev, beta, alpha = (_per_sample(v, timesteps) for v in at)
    posterior_log_var = ((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * beta).clamp(min=MIN_POSTERIOR_VARIANCE).log()
    frac = (variance_values.float() + 1.0) / 2.0
    model_log_var = frac * beta.log() + (1.0 - frac) * posterior_log_var
    coef_x0 = beta * alpha_bar_prev.sqrt() / (1.0 - alpha_bar)
    coef_xt = (1.0 - alpha_bar_prev) * alpha.sqrt() / (1.0 - alpha_bar)
    x0_pred = predicted_x0(x_t.float(), output.float(), timesteps, tables, prediction)
    model_mean = coef_x0 * x0_pred + coef_xt * x_t.float()
    true_mean = coef_x0 * latents.float() + coef_xt * x_t.float()
    kl = 0.5 * (
        model_log_var
        - posterior_log_var
        - 1.0
        + torch.exp(posterior_log_var - model_log_var)
        + (true_mean - model_mean) ** 2 * torch.exp(-model_log_var)
    )
    kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = decoder_nll_bits(latents.float(), model_mean, model_log_var)
    return torch.where(timesteps.to(kl.device) == 0, nll, kl)


def check_vb(model_out_channels: int, in_channels: int, schedule: NoiseSchedule) -> None:
    """Raise TrainingError unless the VB term can be computed for this model and schedule."""
    if model_out_channels != 2 * in_channels:
        raise TrainingError(
            f"training setting vb_loss: the VB term needs a learned-variance model (out_channels = 2 x in_channels "
            f"= {2 * in_channels}); this model has out_channels {model_out_channels}. Turn vb_loss off."
        )
    if schedule.zero_terminal_snr:
        raise TrainingError(
            "training setting vb_loss: the VB term needs alpha_bar > 0 at every timestep, but this model's schedule "
            "has zero terminal SNR (alpha_bar = 0 at the last step). Turn vb_loss off."
        )


def diffusion_loss(
    model,
    latents: Tensor,
    caption: Tensor,
    caption_mask: Tensor | None,
    noise: Tensor,
    timesteps: Tensor,
    schedule: NoiseSchedule,
    vb: bool = False,
    detach_mean: bool = False,
    block_hooks: Sequence[BlockHook] = (),
    tables: ScheduleTables | None = None,
) -> LossTerms:
    """The reference's training loss of ``model`` (a ``PixArtTransformer``) on one batch.

    Args:
        latents: (B, C_in, H, W) VAE latents, already scaled by the VAE's factor.
        caption: (B, L, caption_channels) T5 states; caption_mask: (B, L) ones for real tokens, or None.
        noise: (B, C_in, H, W) standard normal; timesteps: (B,) int64 in 0..T-1.
        schedule: the model's training noise schedule (its prediction type chooses the target).
        vb: add the learned-sigma VB term; detach_mean: keep the VB term from training the mean prediction.
        block_hooks: passed to the model's forward (gradient checkpointing).
        tables: ``schedule_tables(schedule)`` when the caller keeps them; computed otherwise.
    Returns:
        LossTerms of scalars; ``total`` is what to back-propagate.
    """
    if timesteps.dtype not in (torch.int32, torch.int64) or timesteps.shape != latents.shape[:1]:
        raise TrainingError(
            f"timesteps must be ({latents.shape[0]},) integers, got {tuple(timesteps.shape)} {timesteps.dtype}"
        )
    if int(timesteps.min()) < 0 or int(timesteps.max()) >= schedule.train_steps:
        raise TrainingError(f"timesteps must lie in 0..{schedule.train_steps - 1}, got {timesteps.tolist()}")
    if noise.shape != latents.shape:
        raise TrainingError(f"noise {tuple(noise.shape)} must have the latents' shape {tuple(latents.shape)}")
    tables = tables or schedule_tables(schedule, latents.device)
    x_t = add_noise(latents, noise, timesteps, tables)
    out = model(x_t, timesteps.to(latents.device), caption, caption_mask, block_hooks=block_hooks)
    channels = latents.shape[1]
    output = out[:, :channels]
    target = prediction_target(latents, noise, timesteps, tables, schedule.prediction)
    mse = F.mse_loss(output.float(), target.float())
    if not vb:
        return LossTerms(mse, mse, mse.new_zeros(()))
    check_vb(out.shape[1], channels, schedule)
    mean_output = output.detach() if detach_mean else output
    terms = vb_bits(latents, x_t, mean_output, out[:, channels:], timesteps, tables, schedule.prediction)
    vb_term = terms.mean()
    return LossTerms(mse + vb_term, mse, vb_term)
