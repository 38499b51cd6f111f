"""The ComfyUI side of the sampling recipes: a MODEL's noise schedule as ComfyUI model sampling, and the SAMPLER
functions of the one-step and LCM recipes. Imported only inside ComfyUI (by the schedule nodes when they run, and by
a loader that gives a MODEL its schedule).

ComfyUI samples in VE form: ``x = x_0 + sigma noise`` and the model wrapper returns the x_0 estimate. The recipes
are written on VP samples ``x_vp = x / sqrt(1 + sigma^2)``; the sampler functions here translate.
"""

from __future__ import annotations

import math

import comfy.model_sampling
import comfy.samplers
import torch

from ..pixart.sampling import NoiseSchedule, dpm_solver_schedule, lcm_steps, one_step

PREDICTIONS = {"epsilon": comfy.model_sampling.EPS, "v_prediction": comfy.model_sampling.V_PREDICTION}


def model_sampling_for(schedule: NoiseSchedule, model_config=None) -> comfy.model_sampling.ModelSamplingDiscrete:
    """ComfyUI's discrete model sampling for a PixArt noise schedule: EPS or V_PREDICTION on the schedule's sigmas
    (zero-terminal-SNR with diffusers' terminal alpha_bar 2^-24, so samplers match the reference pipelines)."""

    class PixArtModelSampling(comfy.model_sampling.ModelSamplingDiscrete, PREDICTIONS[schedule.prediction]):
        noise_schedule = schedule  # read back by noise_schedule_of

    sampling = PixArtModelSampling(model_config, zsnr=False)
    sampling.set_sigmas(schedule.sigmas().float())
    return sampling


def with_noise_schedule(model, schedule: NoiseSchedule):
    """A clone of the MODEL (ModelPatcher) that samples with ``schedule``; stock KSampler / KSamplerAdvanced then
    sample a v-prediction or zero-terminal-SNR checkpoint as diffusers does."""
    patched = model.clone()
    patched.add_object_patch("model_sampling", model_sampling_for(schedule, patched.model.model_config))
    return patched


def noise_schedule_of(model) -> NoiseSchedule | None:
    """The NoiseSchedule a MODEL samples with when ``with_noise_schedule`` gave it one (PixArt Sigma DiT Loader from a
    pipeline folder's scheduler config, or PixArt Sigma Noise Schedule), else None (ComfyUI's default sampling)."""
    return getattr(model.get_model_object("model_sampling"), "noise_schedule", None)


def prediction_of(model) -> str:
    """The MODEL's prediction type, "epsilon" or "v_prediction": the class in its model sampling's MRO that defines
    ``calculate_denoised`` (ComfyUI's V_PREDICTION derives from EPS); another class's name for other kinds."""
    sampling = model.get_model_object("model_sampling")
    names = {kind: name for name, kind in PREDICTIONS.items()}
    kind = next(k for k in type(sampling).__mro__ if "calculate_denoised" in vars(k))
    return names.get(kind, kind.__name__)


def model_noise_schedule(model) -> NoiseSchedule:
    """The MODEL's own noise schedule: the one ``with_noise_schedule`` gave it, else linear betas (every PixArt
    model's, as ComfyUI's default model sampling of our MODEL holds them) over its model sampling's training steps,
    with its prediction type (``prediction_of``)."""
    carried = noise_schedule_of(model)
    if carried is not None:
        return carried
    sampling = model.get_model_object("model_sampling")
    return NoiseSchedule(prediction=prediction_of(model), train_steps=len(sampling.sigmas))


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
