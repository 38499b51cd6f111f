"""PixArt Sigma Sampler: ComfyUI's sampling with the PixArt-Σ reference defaults and input checks."""

from __future__ import annotations

import importlib

from pixart import PixArtConfig

from .common import CATEGORY, check_latent, spec

DEFAULT_SAMPLER = "dpmpp_2m"  # DPM-Solver++ (2M), the reference sampler
DEFAULT_SCHEDULER = "sgm_uniform"  # timesteps evenly spaced from 999, like the reference's time-uniform steps


def pixart_config(model):
    """The PixArtConfig of a MODEL loaded by PixArt Sigma DiT Loader, else None."""
    config = getattr(getattr(getattr(model, "model", None), "diffusion_model", None), "config", None)
    return config if isinstance(config, PixArtConfig) else None


class PixArtSigmaSampler:
    """Samples a PixArt MODEL with ComfyUI's samplers, defaulting to the PixArt-Σ reference settings."""

    TITLE = "PixArt Sigma Sampler"
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent; decode it with VAEDecode and the model's VAE (SDXL VAE for Sigma).",)
    DESCRIPTION = (
        "PixArt Sigma Sampler: denoises a latent with ComfyUI's samplers, with the PixArt-Sigma reference defaults "
        "(20 steps, CFG 4.5, DPM-Solver++ 2M). Shows ComfyUI's progress bar and previews and stops on Cancel."
    )

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        import comfy.samplers

        return {
            "required": {
                "model": spec("MODEL", "PixArt Sigma model from PixArt Sigma DiT Loader (or any MODEL)."),
                "positive": spec("CONDITIONING", "The prompt, from PixArt Sigma Text Encode."),
                "negative": spec("CONDITIONING", "The negative prompt; an empty prompt is the reference."),
                "latent_image": spec("LATENT", "Start latent, e.g. from PixArt Sigma Resolution."),
                "seed": spec(
                    "INT",
                    "Noise seed, 0 to 2^64-1; the same seed gives the same image.",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                ),
                "steps": spec(
                    "INT", "Denoising steps, 1 to 10000; the reference uses 20.", default=20, min=1, max=10000
                ),
                "cfg": spec(
                    "FLOAT",
                    "Classifier-free guidance scale, 0 to 100; the reference uses 4.5; 1 skips the negative.",
                    default=4.5,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                ),
                "sampler_name": spec(
                    comfy.samplers.KSampler.SAMPLERS,
                    "ComfyUI sampler; dpmpp_2m is the reference DPM-Solver++.",
                    default=DEFAULT_SAMPLER,
                ),
                "scheduler": spec(
                    comfy.samplers.KSampler.SCHEDULERS,
                    "Noise schedule; sgm_uniform spaces timesteps evenly from 999, like the reference.",
                    default=DEFAULT_SCHEDULER,
                ),
                "denoise": spec(
                    "FLOAT",
                    "Fraction of the schedule to run, 0 to 1; below 1 keeps part of the input latent.",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                ),
            }
        }

    def sample(self, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise):
        config, samples = pixart_config(model), latent_image["samples"]
        if config is not None and (samples.ndim != 4 or samples.shape[1] == config.in_channels or samples.any()):
            check_latent(config, tuple(samples.shape), "PixArt Sigma Sampler")  # all-zero latents ComfyUI adapts
        comfy_nodes = importlib.import_module("nodes")  # ComfyUI's nodes.py (ours is imported relatively)
        args = (model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image)
        return comfy_nodes.common_ksampler(*args, denoise=denoise)
