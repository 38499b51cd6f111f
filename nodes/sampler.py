"""PixArt Sigma Sampler: ComfyUI's sampling with the PixArt-Sigma reference defaults and input checks."""

from __future__ import annotations

import importlib

import comfy.samplers

from ..pixart import PixArtConfig
from .common import check_latent
from .node_api import CATEGORY, check_number, io, number_problem, schema

DEFAULT_SAMPLER = "dpmpp_2m"  # DPM-Solver++ (2M), the reference sampler
DEFAULT_SCHEDULER = "pixart_dpm_solver"  # the reference's integer timesteps (schedule.DPM_SOLVER_SCHEDULER)
CFG = {"default": 4.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}
DENOISE = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}
WHO = "PixArt Sigma Sampler"
COMFY_NODES = importlib.import_module("nodes")  # ComfyUI's nodes.py (this package's own modules import relatively)


def pixart_config(model):
    """The PixArtConfig of a MODEL loaded by PixArt Sigma DiT Loader, else None."""
    config = getattr(getattr(getattr(model, "model", None), "diffusion_model", None), "config", None)
    return config if isinstance(config, PixArtConfig) else None


class PixArtSigmaSampler(io.ComfyNode):
    """Samples a PixArt MODEL with ComfyUI's samplers, defaulting to the PixArt-Sigma reference settings."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaSampler",
            display_name="PixArt Sigma Sampler",
            category=CATEGORY,
            search_aliases=["pixart ksampler"],
            description=(
                "PixArt Sigma Sampler: denoises a latent with ComfyUI's samplers, with the PixArt-Sigma reference "
                "defaults (20 steps, CFG 4.5, DPM-Solver++ 2M). Shows ComfyUI's progress bar and previews and stops "
                "on Cancel; refuses sizes that cannot fit in memory before sampling."
            ),
            inputs=[
                io.Model.Input("model", tooltip="PixArt Sigma model from PixArt Sigma DiT Loader (or any MODEL)."),
                io.Conditioning.Input("positive", tooltip="The prompt, from PixArt Sigma Text Encode."),
                io.Conditioning.Input("negative", tooltip="The negative prompt; an empty prompt is the reference."),
                io.Latent.Input("latent_image", tooltip="Start latent, e.g. from PixArt Sigma Resolution."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Noise seed, 0 to 2^64-1; the same seed gives the same image.",
                ),
                io.Int.Input(
                    "steps", default=20, min=1, max=10000, tooltip="Denoising steps, 1 to 10000; the reference uses 20."
                ),
                io.Float.Input(
                    "cfg",
                    **CFG,
                    tooltip="Classifier-free guidance scale, 0 to 100; the reference uses 4.5; 1 skips the negative.",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.KSampler.SAMPLERS,
                    default=DEFAULT_SAMPLER,
                    tooltip="ComfyUI sampler; dpmpp_2m is the reference DPM-Solver++.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.KSampler.SCHEDULERS,
                    default=DEFAULT_SCHEDULER,
                    tooltip="Noise schedule; pixart_dpm_solver gives the reference pipeline's integer timesteps "
                    "(999, 949, ...); sgm_uniform (the default before) spaces them evenly but fractional.",
                ),
                io.Float.Input(
                    "denoise",
                    **DENOISE,
                    tooltip="Fraction of the schedule to run, 0 to 1; below 1 keeps part of the input latent.",
                ),
            ],
            outputs=[
                io.Latent.Output(
                    tooltip="The denoised latent; decode it with VAEDecode and the model's VAE (SDXL VAE for Sigma)."
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, cfg=None, denoise=None) -> bool | str:
        """Non-finite or out-of-range cfg and denoise, before the prompt runs (ComfyUI's range check, which these
        inputs now replace, lets NaN through)."""
        problems = [number_problem("cfg", cfg, CFG["min"], CFG["max"])]
        problems.append(number_problem("denoise", denoise, DENOISE["min"], DENOISE["max"]))
        problems = [p for p in problems if p is not None]
        return f"{WHO}: {'; '.join(problems)}" if problems else True

    @classmethod
    def execute(
        cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise
    ) -> io.NodeOutput:
        check_number(WHO, "cfg", cfg, CFG["min"], CFG["max"])
        check_number(WHO, "denoise", denoise, DENOISE["min"], DENOISE["max"])
        config, samples = pixart_config(model), latent_image["samples"]
        if config is not None and (samples.ndim != 4 or samples.shape[1] == config.in_channels or samples.any()):
            check_latent(config, tuple(samples.shape), WHO)  # all-zero latents ComfyUI adapts
        args = (model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image)
        return io.NodeOutput(*COMFY_NODES.common_ksampler(*args, denoise=denoise))
