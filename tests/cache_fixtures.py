"""Tiny PixArt-Sigma pipelines for the step-cache tests: diffusers' PixArtSigmaPipeline (the references run on it)
and our transformer with the same weights, prompt embeddings, noise and DPM-Solver++ schedule."""

from __future__ import annotations

import torch

from pixart import PixArtTransformer
from pixart.caches import GuidedDenoiser, StepCache

GUIDANCE = 4.5
LATENT = 16  # latent side: an 8 x 8 token grid
BATCH, TOKENS = 2, 7


def dpm_solver():
    """diffusers' DPM-Solver++ as PixArt-Sigma's pipeline configures it (linear betas, 2nd order, epsilon)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        prediction_type="epsilon",
    )


def reference_pipeline(reference):
    from diffusers import PixArtSigmaPipeline

    return PixArtSigmaPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=reference, scheduler=dpm_solver()
    )


def prompts(seed: int = 3) -> dict:
    """Prompt and negative embeddings with a different caption length per sample, and the starting noise."""
    g = torch.Generator().manual_seed(seed)
    caption = torch.randn(BATCH, TOKENS, 48, generator=g)
    negative = torch.randn(BATCH, TOKENS, 48, generator=g)
    mask, negative_mask = torch.zeros(BATCH, TOKENS), torch.zeros(BATCH, TOKENS)
    for i in range(BATCH):
        mask[i, : TOKENS - 2 * i] = 1
        negative_mask[i, : 2 + i] = 1
    noise = torch.randn(BATCH, 4, LATENT, LATENT, generator=g)
    return {"caption": caption, "mask": mask, "negative": negative, "negative_mask": negative_mask, "noise": noise}


def pipeline_kwargs(p: dict, steps: int) -> dict:
    return {
        "negative_prompt": None,
        "prompt_embeds": p["caption"],
        "prompt_attention_mask": p["mask"],
        "negative_prompt_embeds": p["negative"],
        "negative_prompt_attention_mask": p["negative_mask"],
        "latents": p["noise"].clone(),
        "num_inference_steps": steps,
        "guidance_scale": GUIDANCE,
        "height": 8 * LATENT,
        "width": 8 * LATENT,
        "output_type": "latent",
        "use_resolution_binning": False,
    }


def sample(model: PixArtTransformer, p: dict, steps: int, cache: StepCache | None = None) -> torch.Tensor:
    """Our model stepped by diffusers' DPM-Solver++ as PixArtSigmaPipeline steps it -> (B, 4, H, W) latents."""
    denoise = GuidedDenoiser(model, p["caption"], p["mask"], p["negative"], p["negative_mask"], GUIDANCE, cache)
    scheduler = dpm_solver()
    scheduler.set_timesteps(steps)
    x = p["noise"].clone() * scheduler.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            eps = denoise(i, scheduler.scale_model_input(x, t), t)
            x = scheduler.step(eps, t, x, return_dict=False)[0]
    return x
