"""Tiny training fixtures: our model and diffusers' with the same weights, a fixed batch, and the reference's loss.

``reference_loss`` is the test's own implementation of the reference objective (okotaku/pixartengine
``PixArt.loss`` and diffusers' PixArt LoRA script) on diffusers' ``PixArtTransformer2DModel`` with diffusers'
``DDPMScheduler`` tables: epsilon (or v) MSE on the first C_in channels, plus the learned-sigma VB term written as
the KL of two Gaussians (bits), the discretised decoder NLL at t = 0.
"""

from __future__ import annotations

import math

import torch
from dit_fixtures import official_state_dict, reference_model, tiny_config

from pixart import PixArtTransformer

BATCH = 4
SIZE = 16  # latent side
TOKENS = 7


def pair(seed: int = 0, **changes):
    """(config, diffusers model, our model) with the same random weights, both fp32."""
    config = tiny_config(**changes)
    reference = reference_model(config, seed)
    ours = PixArtTransformer(config, token_chunk=None)
    ours.load_state_dict(official_state_dict(reference, config, training_extras=False))
    return config, reference, ours


def batch(config, seed: int = 5, timesteps=(0, 1, 500, 999)):
    """Latents, caption states, caption masks (a different length per sample), noise and integer timesteps."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(BATCH, config.in_channels, SIZE, SIZE, generator=g)
    caption = torch.randn(BATCH, TOKENS, config.caption_channels, generator=g)
    mask = torch.ones(BATCH, TOKENS)
    for i in range(BATCH):
        mask[i, TOKENS - 2 * i :] = 0
    noise = torch.randn(latents.shape, generator=g)
    return latents, caption, mask, noise, torch.tensor(timesteps, dtype=torch.long)


def scheduler(prediction: str = "epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", prediction_type=prediction
    )


def _approx_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh((2.0 / math.pi) ** 0.5 * (z + 0.044715 * z.pow(3))))


def reference_vb(sched, latents, x_t, eps, var_values, t) -> torch.Tensor:
    """The learned-sigma VB term (bits, batch mean) as the reference defines it, from DDPMScheduler's tables."""
    ac = sched.alphas_cumprod
    ac_prev = torch.cat([torch.ones(1), ac[:-1]])

    def at(table):
        return table[t][:, None, None, None]

    a_t, a_prev, beta = at(ac), at(ac_prev), at(sched.betas)
    var_post = torch.clamp(beta * (1 - a_prev) / (1 - a_t), min=1e-20)
    v = (var_values + 1) / 2
    log_var_model = v * torch.log(beta) + (1 - v) * torch.log(var_post)
    x0_hat = torch.sqrt(1.0 / a_t) * x_t - torch.sqrt(1.0 / a_t - 1) * eps
    w0 = beta * torch.sqrt(a_prev) / (1 - a_t)
    wt = (1 - a_prev) * torch.sqrt(at(sched.alphas)) / (1 - a_t)
    mu_model, mu_true = w0 * x0_hat + wt * x_t, w0 * latents + wt * x_t
    # KL(N(mu_true, var_post) || N(mu_model, exp(log_var_model))) in nats
    kl = 0.5 * (
        log_var_model - torch.log(var_post) + (var_post + (mu_true - mu_model) ** 2) * torch.exp(-log_var_model) - 1.0
    )
    # the discretised Gaussian likelihood of x_0 (bins of 2/255, open edge bins beyond +-0.999)
    inv_sigma = torch.exp(-0.5 * log_var_model)
    hi = _approx_cdf(inv_sigma * (latents - mu_model + 1 / 255))
    lo = _approx_cdf(inv_sigma * (latents - mu_model - 1 / 255))
    middle = torch.log(torch.clamp(hi - lo, min=1e-12))
    log_p = torch.where(
        latents < -0.999,
        torch.log(torch.clamp(hi, min=1e-12)),
        torch.where(latents > 0.999, torch.log(torch.clamp(1 - lo, min=1e-12)), middle),
    )
    bits = torch.where(t == 0, -log_p.mean(dim=(1, 2, 3)), kl.mean(dim=(1, 2, 3))) / math.log(2)
    return bits.mean()


def reference_loss(model, latents, caption, mask, noise, t, vb: bool, prediction: str = "epsilon") -> torch.Tensor:
    """The reference training loss of a diffusers ``PixArtTransformer2DModel`` (or a PEFT model around one)."""
    sched = scheduler(prediction)
    x_t = sched.add_noise(latents, noise, t)
    out = model(
        x_t,
        encoder_hidden_states=caption,
        timestep=t,
        encoder_attention_mask=mask,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    ).sample
    eps, var_values = out.chunk(2, dim=1)
    target = noise if prediction == "epsilon" else sched.get_velocity(latents, noise, t)
    loss = torch.nn.functional.mse_loss(eps.float(), target.float())
    if vb:
        loss = loss + reference_vb(sched, latents, x_t, eps, var_values, t)
    return loss


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
