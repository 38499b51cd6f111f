"""PixArt Sigma Few-Step Schedule (SAMPLER + SIGMAS for SamplerCustomAdvanced) and PixArt Sigma Noise Schedule
(a MODEL's prediction type and zero-terminal-SNR), running the ``pixart.sampling`` recipes in ComfyUI with the
SAMPLER functions of the one-step and LCM recipes (the MODEL's schedule itself: dit/model.py).

ComfyUI samples in VE form: ``x = x_0 + sigma noise`` and the model wrapper returns the x_0 estimate. The recipes
are written on VP samples ``x_vp = x / sqrt(1 + sigma^2)``; the sampler functions here translate."""

from __future__ import annotations

import dataclasses
import math

import comfy.samplers
import torch

from ..pixart.errors import ScheduleError
from ..pixart.sampling import RECIPES, NoiseSchedule, dpm_solver_schedule, lcm_steps, model_recipe, one_step
from ..pixart.sampling.schedules import PREDICTIONS
from .dit.model import model_noise_schedule, noise_schedule_of, prediction_of, with_noise_schedule
from .node_api import CATEGORY, io, schema

WHO = "PixArt Sigma Few-Step Schedule"


def check_prediction(model, recipe_name: str) -> None:
    """ValueError unless the MODEL predicts what the recipe's checkpoint predicts."""
    wanted, found = RECIPES[recipe_name].schedule.prediction, prediction_of(model)
    if found != wanted:
        raise ValueError(
            f"{WHO}: recipe {recipe_name!r} is for a {wanted} model, but this MODEL samples as {found}; put "
            f"PixArt Sigma Noise Schedule (prediction {wanted}) before the guider"
        )


def sigmas_at(sampling, timesteps: list[int]) -> torch.Tensor:
    """(steps + 1,) float32 sigmas of a ComfyUI model sampling at integer ``timesteps``, then 0."""
    sigmas = [sampling.sigma(torch.tensor(float(t))) for t in timesteps]
    return torch.stack([*sigmas, torch.zeros(())]).float()


def recipe_sigmas(model, timesteps: list[int]) -> torch.Tensor:
    """(steps + 1,) float sigmas of the model's schedule at ``timesteps``, then 0."""
    return sigmas_at(model.get_model_object("model_sampling"), timesteps)


DPM_SOLVER_SCHEDULER = "pixart_dpm_solver"  # ComfyUI scheduler name of the reference pipeline's timesteps


def dpm_solver_sigmas(model_sampling, steps: int) -> torch.Tensor:
    """ComfyUI scheduler ``pixart_dpm_solver``: the integer timesteps of the reference pipeline's DPM-Solver++
    (999, 949, ...: ``pixart.sampling.dpm_solver_schedule``, diffusers' linspace spacing) over the model's training
    steps, each at the model sampling's own sigma, then 0; (steps + 1,) float32."""
    schedule = getattr(model_sampling, "noise_schedule", None)  # set by with_noise_schedule
    if schedule is None:
        schedule = NoiseSchedule(train_steps=len(model_sampling.sigmas))
    timesteps, _ = dpm_solver_schedule(steps, schedule)
    return sigmas_at(model_sampling, timesteps)


def register_scheduler() -> None:
    """Add ``pixart_dpm_solver`` to ComfyUI's schedulers (``SCHEDULER_HANDLERS`` and the name list KSampler,
    BasicScheduler and PixArt Sigma Sampler offer), as ComfyUI 0.3.64 and 0.33 both hold them; a name already
    registered (a second copy of the pack) is left as it is."""
    handlers = comfy.samplers.SCHEDULER_HANDLERS
    handlers.setdefault(DPM_SOLVER_SCHEDULER, comfy.samplers.SchedulerHandler(dpm_solver_sigmas))
    for names in (comfy.samplers.SCHEDULER_NAMES, comfy.samplers.KSampler.SCHEDULERS):  # the same list, unless
        if DPM_SOLVER_SCHEDULER not in names:  # another pack replaced one
            names.append(DPM_SOLVER_SCHEDULER)


def _unit_variance_start(model, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The reference's start, sqrt(1 + sigma^2) noise (unit variance in VP form): ComfyUI scales the start noise by
    sigma unless sigma is its largest (custom sigmas below it, e.g. the one-step models' timestep 400). Valid for
    an empty start latent only, which ``FromNoiseSampler`` makes sure of."""
    sigma_max = float(model.inner_model.model_patcher.get_model_object("model_sampling").sigma_max)
    s = float(sigma)
    if math.isclose(sigma_max, s, rel_tol=1e-5) or s > sigma_max:
        return x
    return x * (math.sqrt(1.0 + s * s) / s)


def sample_one_step(model, x, sigmas, extra_args=None, callback=None, disable=None, clip_sample=None):
    """KSAMPLER function of the one-step models: ``pixart``'s one-step solver on the x_0 estimate at sigmas[0], from
    unit-variance noise."""
    extra_args = extra_args or {}
    x = _unit_variance_start(model, x, sigmas[0])

    def x0_model(sample: torch.Tensor, i: int) -> torch.Tensor:
        return model(sample, sigmas[0] * sample.new_ones([sample.shape[0]]), **extra_args)

    denoised = one_step(x0_model, x, clip_sample)
    if callback is not None:
        callback({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": denoised})
    return denoised


def sample_lcm_reference(model, x, sigmas, extra_args=None, callback=None, disable=None, timestep_scaling=10.0):
    """KSAMPLER function of LCM as diffusers' LCMScheduler runs it: ``pixart``'s LCM steps in VP form
    (x_vp = x / sqrt(1 + sigma^2)), the noise between steps drawn from ``torch.Generator().manual_seed(seed)`` after
    the start noise (which RandomNoise drew from the same seed), so a run equals the pipeline called with that
    generator."""
    extra_args = extra_args or {}
    sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
    generator = torch.Generator().manual_seed(int(extra_args.get("seed", 0)))
    torch.randn(x.shape, generator=generator, dtype=x.dtype)  # the start noise's draw
    x = _unit_variance_start(model, x, sigmas[0])
    steps = len(sigmas) - 1
    scales = [math.sqrt(1.0 + float(sigma) ** 2) for sigma in sigmas[:steps]]  # VE / VP

    def x0_model(x_vp: torch.Tensor, i: int) -> torch.Tensor:
        return model(x_vp * scales[i], sigmas[i] * x_vp.new_ones([x_vp.shape[0]]), **extra_args)

    def draw(x_vp: torch.Tensor) -> torch.Tensor:
        return torch.randn(x_vp.shape, generator=generator, dtype=x_vp.dtype).to(x_vp.device)

    def report(i: int, x_vp: torch.Tensor, denoised: torch.Tensor) -> None:
        if callback is not None:
            sigma = sigmas[i]
            callback({"x": x_vp * scales[i], "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})

    timesteps = [int(sampling.timestep(sigma)) for sigma in sigmas[:steps]]
    alpha_bars = [1.0 / (scale * scale) for scale in scales]
    return lcm_steps(x0_model, x / scales[0], timesteps, alpha_bars, draw, timestep_scaling, report)


class FromNoiseSampler(comfy.samplers.KSAMPLER):
    """A KSAMPLER that refuses a start latent that is not empty: the one-step and LCM recipes start from pure
    noise (text to image), and ComfyUI adds the latent to the noise before the sampler function sees it."""

    def __init__(self, who: str, sampler_function, extra_options=None):
        super().__init__(sampler_function, extra_options or {})
        self.who = who

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, *args, **kwargs):
        if latent_image is not None and bool(latent_image.any()):
            raise ValueError(
                f"{self.who}: the start latent is not empty; the one-step and LCM recipes sample from pure noise "
                "(text to image), as their reference pipelines do. Connect an empty latent (PixArt Sigma Resolution "
                "or EmptyLatentImage)."
            )
        return super().sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, *args, **kwargs)


def recipe_sampler(who: str, solver: str, clip_sample: float | None = None):
    """The SAMPLER of a recipe's solver: "one_step", "lcm" or "dpmpp_2m" (ComfyUI's own)."""
    if solver == "one_step":
        return FromNoiseSampler(who, sample_one_step, {"clip_sample": clip_sample})
    if solver == "lcm":
        return FromNoiseSampler(who, sample_lcm_reference)
    return comfy.samplers.ksampler("dpmpp_2m")


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
                "spacing). Feed SamplerCustomAdvanced with a guider at CFG 1 for the few-step models. The one-step "
                "and LCM recipes sample from pure noise: their start latent must be empty (refused otherwise)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The PixArt MODEL the sigmas are taken from (its noise schedule)."),
                io.Combo.Input(
                    "recipe",
                    options=list(RECIPES),
                    default="alpha-dmd-512",
                    tooltip="The checkpoint's sampling recipe (README: which checkpoint needs which recipe). "
                    "One-step and LCM recipes need an empty start latent (text to image).",
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
        try:
            chosen = model_recipe(recipe, model_noise_schedule(model), steps, timestep)
        except ScheduleError as e:
            raise ScheduleError(f"{WHO}: {e}") from e
        sampler = recipe_sampler(WHO, chosen.solver, chosen.clip_sample)
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
                "terminal value, so stock samplers (KSampler, KSamplerAdvanced) sample it as diffusers does. "
                "Overrides the prediction and zero terminal SNR of the MODEL; its betas and training steps stay "
                "those it carries. PixArt Sigma DiT Loader already reads all of these from a diffusers pipeline "
                "folder's scheduler/scheduler_config.json (the exact path for a folder with its own betas); "
                "other files sample on linear betas 1e-4..0.02 over 1000 steps."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A PixArt MODEL (from PixArt Sigma DiT Loader)."),
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
        carried = noise_schedule_of(model) or NoiseSchedule()  # betas from the DiT Loader's pipeline folder, if any
        schedule = dataclasses.replace(carried, prediction=prediction, zero_terminal_snr=zero_terminal_snr)
        return io.NodeOutput(with_noise_schedule(model, schedule))
