"""PixArt Sigma Few-Step Schedule (SAMPLER + SIGMAS for SamplerCustomAdvanced) and PixArt Sigma Noise Schedule
(a MODEL's prediction type and zero-terminal-SNR), running the ``pixart.sampling`` recipes in ComfyUI.

ComfyUI samples in VE form: ``x = x_0 + sigma noise`` and the model wrapper returns the x_0 estimate. The recipes
are written on VP samples ``x_vp = x / sqrt(1 + sigma^2)``; the sampler functions here translate.
"""

from __future__ import annotations

import dataclasses
import math

import comfy.model_sampling
import comfy.samplers
import torch

from ..pixart.sampling import RECIPES, NoiseSchedule, lcm_boundary
from .node_api import CATEGORY, io, schema

WHO = "PixArt Sigma Few-Step Schedule"
PREDICTIONS = {"epsilon": comfy.model_sampling.EPS, "v_prediction": comfy.model_sampling.V_PREDICTION}


def model_sampling_for(schedule: NoiseSchedule, model_config=None) -> comfy.model_sampling.ModelSamplingDiscrete:
    """ComfyUI's discrete model sampling for a PixArt noise schedule: EPS or V_PREDICTION on the schedule's sigmas
    (zero-terminal-SNR with diffusers' terminal alpha_bar 2^-24, so samplers match the reference pipelines)."""

    class PixArtModelSampling(comfy.model_sampling.ModelSamplingDiscrete, PREDICTIONS[schedule.prediction]):
        pass

    sampling = PixArtModelSampling(model_config, zsnr=False)
    sampling.set_sigmas(schedule.sigmas().float())
    return sampling


def with_noise_schedule(model, schedule: NoiseSchedule):
    """A clone of the MODEL (ModelPatcher) that samples with ``schedule``; the loader can call this for v-prediction
    checkpoints, so that stock KSampler / KSamplerAdvanced get them right."""
    patched = model.clone()
    patched.add_object_patch("model_sampling", model_sampling_for(schedule, patched.model.model_config))
    return patched


def _unit_variance_start(model, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The reference's start, sqrt(1 + sigma^2) noise (unit variance in VP form): ComfyUI scales the start noise by
    sigma unless sigma is its largest (custom sigmas below it, e.g. the one-step models' timestep 400). Assumes an
    empty (all-zero) start latent, as text-to-image has."""
    sigma_max = float(model.inner_model.model_patcher.get_model_object("model_sampling").sigma_max)
    s = float(sigma)
    if math.isclose(sigma_max, s, rel_tol=1e-5) or s > sigma_max:
        return x
    return x * (math.sqrt(1.0 + s * s) / s)


def sample_one_step(model, x, sigmas, extra_args=None, callback=None, disable=None, clip_sample=None):
    """KSAMPLER function of the one-step models: the x_0 estimate at sigmas[0] from unit-variance noise."""
    extra_args = extra_args or {}
    x = _unit_variance_start(model, x, sigmas[0])
    denoised = model(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
    if clip_sample is not None:
        denoised = denoised.clamp(-clip_sample, clip_sample)
    if callback is not None:
        callback({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": denoised})
    return denoised


def sample_lcm_reference(model, x, sigmas, extra_args=None, callback=None, disable=None, timestep_scaling=10.0):
    """KSAMPLER function of LCM as diffusers' LCMScheduler runs it: boundary conditions c_skip / c_out, and the noise
    between steps drawn from ``torch.Generator().manual_seed(seed)`` after the start noise (which RandomNoise drew
    from the same seed), so a run equals the pipeline called with that generator."""
    extra_args = extra_args or {}
    sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
    generator = torch.Generator().manual_seed(int(extra_args.get("seed", 0)))
    torch.randn(x.shape, generator=generator, dtype=x.dtype)  # the start noise's draw
    x = _unit_variance_start(model, x, sigmas[0])
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, sigma * ones, **extra_args)
        c_skip, c_out = lcm_boundary(int(sampling.timestep(sigma)), timestep_scaling)
        denoised = c_skip * x / math.sqrt(1.0 + float(sigma) ** 2) + c_out * denoised
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x


def recipe_sigmas(model, timesteps: list[int]) -> torch.Tensor:
    """(steps + 1,) float sigmas of the model's schedule at ``timesteps``, then 0."""
    sampling = model.get_model_object("model_sampling")
    sigmas = [sampling.sigma(torch.tensor(float(t))) for t in timesteps]
    return torch.stack([*sigmas, torch.zeros(())]).float()


def check_prediction(model, recipe_name: str) -> None:
    """ValueError unless the MODEL predicts what the recipe's checkpoint predicts."""
    wanted = PREDICTIONS[RECIPES[recipe_name].schedule.prediction]
    sampling = model.get_model_object("model_sampling")
    if not isinstance(sampling, wanted):
        found = [name for name, kind in PREDICTIONS.items() if isinstance(sampling, kind)] or [type(sampling).__name__]
        raise ValueError(
            f"{WHO}: recipe {recipe_name!r} is for a {RECIPES[recipe_name].schedule.prediction} model, but this "
            f"MODEL samples as {found[0]}; put PixArt Sigma Noise Schedule (prediction "
            f"{RECIPES[recipe_name].schedule.prediction}) before the guider"
        )


class PixArtSigmaFewStepSchedule(io.ComfyNode):
    """SAMPLER and SIGMAS reproducing a PixArt checkpoint's reference sampling, for SamplerCustomAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaFewStepSchedule",
            display_name=WHO,
            category=CATEGORY,
            search_aliases=["pixart dmd", "pixart lcm", "one step", "nitro", "yoso", "flash pixart", "900m"],
            description=(
                "PixArt Sigma Few-Step Schedule: the sampler and sigmas each PixArt checkpoint's authors use "
                "(alpha-DMD-512 and Nitro: one step at timestep 400 from unit-variance noise; PixArt-LCM and "
                "Flash-PixArt: LCM, 4 steps; YOSO: LCM v-prediction, 1 step; 900M: DPM-Solver++ 2M, trailing "
                "spacing). Feed SamplerCustomAdvanced with a guider at CFG 1 for the few-step models."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The PixArt MODEL the sigmas are taken from (its noise schedule)."),
                io.Combo.Input(
                    "recipe",
                    options=list(RECIPES),
                    default="alpha-dmd-512",
                    tooltip="The checkpoint's sampling recipe; see the README table of checkpoints and recipes.",
                ),
                io.Int.Input(
                    "steps",
                    default=0,
                    min=0,
                    max=1000,
                    tooltip="Model evaluations; 0 uses the recipe's own (1 for one-step models, 4 for LCM).",
                ),
                io.Int.Input(
                    "timestep",
                    default=400,
                    min=1,
                    max=999,
                    tooltip="One-step recipes: the timestep the model was distilled at (400 for DMD and Nitro).",
                ),
            ],
            outputs=[
                io.Sampler.Output(tooltip="The recipe's sampler, for SamplerCustomAdvanced."),
                io.Sigmas.Output(tooltip="The recipe's noise levels (the model's sigmas at its timesteps, then 0)."),
            ],
        )

    @classmethod
    def execute(cls, model, recipe, steps, timestep) -> io.NodeOutput:
        if recipe not in RECIPES:
            raise ValueError(f"{WHO}: recipe {recipe!r} is not one of {list(RECIPES)}")
        check_prediction(model, recipe)
        chosen = RECIPES[recipe]
        changes = {"timestep": timestep} if chosen.solver == "one_step" else {}
        if steps and chosen.solver != "one_step":
            changes["steps"] = steps
        chosen = dataclasses.replace(chosen, **changes)
        if chosen.solver == "one_step":
            sampler = comfy.samplers.KSAMPLER(sample_one_step, {"clip_sample": chosen.clip_sample})
        elif chosen.solver == "lcm":
            sampler = comfy.samplers.KSAMPLER(sample_lcm_reference)
        else:
            sampler = comfy.samplers.ksampler("dpmpp_2m")
        return io.NodeOutput(sampler, recipe_sigmas(model, chosen.timesteps()))


class PixArtSigmaNoiseSchedule(io.ComfyNode):
    """MODEL -> MODEL sampling as epsilon or v-prediction, optionally on a zero-terminal-SNR schedule."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaNoiseSchedule",
            display_name="PixArt Sigma Noise Schedule",
            category=CATEGORY,
            search_aliases=["v prediction", "zero terminal snr", "pixart 900m"],
            description=(
                "PixArt Sigma Noise Schedule: what the model predicts (epsilon, or v for YOSO and the v-prediction "
                "900M revisions) and whether its betas were rescaled to zero terminal SNR, with the reference's "
                "terminal value, so stock samplers (KSampler, KSamplerAdvanced) sample it as diffusers does."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A PixArt MODEL."),
                io.Combo.Input(
                    "prediction",
                    options=list(PREDICTIONS),
                    default="epsilon",
                    tooltip="epsilon for most PixArt checkpoints; v_prediction for YOSO and the v-prediction 900M.",
                ),
                io.Boolean.Input(
                    "zero_terminal_snr",
                    default=False,
                    tooltip="On for checkpoints trained with rescale_betas_zero_snr (the v-prediction 900M).",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The MODEL sampling with this schedule.")],
        )

    @classmethod
    def execute(cls, model, prediction, zero_terminal_snr) -> io.NodeOutput:
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"PixArt Sigma Noise Schedule: prediction {prediction!r} is not one of {list(PREDICTIONS)}"
            )
        schedule = NoiseSchedule(prediction=prediction, zero_terminal_snr=zero_terminal_snr)
        return io.NodeOutput(with_noise_schedule(model, schedule))
