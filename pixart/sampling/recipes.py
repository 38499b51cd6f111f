"""The sampling recipe of each PixArt checkpoint, and ``sample``, which runs one on a PixArt transformer.

Each recipe is what the checkpoint's authors run in diffusers (model card / shipped scheduler config); the tests
prove ``sample`` equal to that pipeline on the same weights, start latents and prompt embeddings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ScheduleError
from .schedules import NoiseSchedule, lcm_timesteps, spaced_timesteps, validate_schedule
from .solvers import Denoiser, guidance, sample_dpmpp_2m, sample_lcm, sample_one_step

SOLVERS = ("one_step", "lcm", "dpmpp_2m")


@dataclass(frozen=True)
class Recipe:
    """How a checkpoint is sampled."""

    solver: str  # "one_step" (x_0 at one timestep), "lcm" (consistency steps) or "dpmpp_2m" (DPM-Solver++ 2M)
    steps: int  # model evaluations (cond + uncond count once)
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    timestep: int = 400  # one_step: the timestep the model was distilled at
    spacing: str = "linspace"  # dpmpp_2m: timestep spacing (see spaced_timesteps)
    original_steps: int = 50  # lcm: steps of the distillation schedule
    cfg: float = 1.0  # guidance scale; <= 1 runs the prompt only, as diffusers does
    clip_sample: float | None = None  # one_step: clamp x_0 to [-clip_sample, clip_sample] (DDPMScheduler option)
    reference: str = ""  # the diffusers call this reproduces

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"Recipe.solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.steps < 1:
            raise ValueError(f"Recipe.steps must be >= 1, got {self.steps}")
        if self.solver == "one_step" and self.steps != 1:
            raise ValueError(f"Recipe: a one_step recipe takes 1 step, got {self.steps}")
        if self.solver == "one_step" and not 0 <= self.timestep < self.schedule.train_steps:
            raise ValueError(f"Recipe.timestep must be in 0..{self.schedule.train_steps - 1}, got {self.timestep}")

    def timesteps(self) -> list[int]:
        """The descending training timesteps the model is evaluated at."""
        schedule = self.schedule
        if self.solver == "one_step":
            timesteps = [self.timestep]
        elif self.solver == "lcm":
            timesteps = lcm_timesteps(self.steps, self.original_steps, schedule.train_steps)
        else:
            timesteps = spaced_timesteps(self.steps, self.spacing, schedule.train_steps)
        source = f"{self.solver} recipe, {self.steps} steps"
        validate_schedule(source, schedule.train_steps, timesteps, schedule.sigmas(), schedule.zero_terminal_snr)
        return timesteps


_V_ZSNR = NoiseSchedule(prediction="v_prediction", zero_terminal_snr=True)

RECIPES: dict[str, Recipe] = {
    "sigma-reference": Recipe(
        "dpmpp_2m", 20, cfg=4.5, reference="PixArtSigmaPipeline default: DPMSolverMultistepScheduler, 20 steps, CFG 4.5"
    ),
    # clip_sample: the DMD demo (PixArt-sigma app/app_pixart_dmd.py) loads DDPMScheduler.from_pretrained(<DMD repo>,
    # subfolder="scheduler") and calls the pipeline with timesteps=[400], guidance_scale=1; the distillation itself
    # (train_scripts/train_pixart_dmd.py, eps_to_mu in scripts/DMD/transformer_train/generate.py) forms x_0 without
    # clipping. The published scheduler_config.json (503 bytes, commit 57df7bb) could not be read here, so whether it
    # sets clip_sample stays unconfirmed: the recipe keeps the unclipped x_0 of training; clip_sample=1.0 reproduces
    # a DDPMScheduler with clip_sample on (tested both ways).
    "alpha-dmd-512": Recipe(
        "one_step", 1, timestep=400, reference="PixArt-alpha-DMD-XL-2-512x512: DDPMScheduler, timesteps=[400], CFG 1"
    ),
    "nitro-1": Recipe("one_step", 1, timestep=400, reference="Nitro-1-PixArt: one step at timestep 400, no CFG"),
    "lcm": Recipe("lcm", 4, reference="PixArt-LCM-XL-2-1024-MS: LCMScheduler (50 original steps), 4 steps, CFG 1"),
    "flash-pixart": Recipe(
        "lcm",
        4,
        reference="Flash-PixArt: LCMScheduler(timestep_spacing='trailing'), 4 steps, CFG 0 (LCMScheduler ignores "
        "timestep_spacing, so these are the LCM timesteps)",
    ),
    "yoso": Recipe(
        "lcm",
        1,
        schedule=NoiseSchedule(prediction="v_prediction"),
        reference="YOSO-PixArt-alpha: LCMScheduler(prediction_type='v_prediction'), 1 step",
    ),
    "sigma-900m-v": Recipe(
        "dpmpp_2m",
        20,
        schedule=_V_ZSNR,
        spacing="trailing",
        cfg=4.5,
        reference="PixArt-Sigma-900M (v-prediction revisions): DPMSolverMultistepScheduler(prediction_type="
        "'v_prediction', rescale_betas_zero_snr=True, timestep_spacing='trailing')",
    ),
}


def model_recipe(name: str, schedule: NoiseSchedule, steps: int = 0, timestep: int | None = None) -> Recipe:
    """``RECIPES[name]`` on the MODEL's own noise schedule: its timesteps are computed over the MODEL's training steps,
    not a fixed 1000, and checked (:func:`validate_schedule`) instead of left for a sampler to clamp.

    Args:
        schedule: the MODEL's schedule (prediction type, zero terminal SNR, training steps T).
        steps: model evaluations; 0 keeps the recipe's own (ignored by one-step recipes).
        timestep: one-step recipes: the distillation timestep, in 0..T-1 (None keeps the recipe's 400).
    Raises:
        ScheduleError naming the recipe and setting: a prediction type or zero-terminal-SNR setting other than the
        checkpoint's, a timestep outside the MODEL's range, more steps than the schedule has distinct timesteps.
    """
    if name not in RECIPES:
        raise ScheduleError(f"recipe {name!r} is not one of {list(RECIPES)}")
    base = RECIPES[name]
    for setting in ("prediction", "zero_terminal_snr"):
        wanted, found = getattr(base.schedule, setting), getattr(schedule, setting)
        if wanted != found:
            raise ScheduleError(
                f"recipe {name!r}: is for a model with {setting} {wanted}, but the MODEL samples with {found}"
            )
    changes: dict = {"schedule": schedule}
    if base.solver == "one_step":
        changes["timestep"] = base.timestep if timestep is None else timestep
        if not 0 <= changes["timestep"] < schedule.train_steps:
            raise ScheduleError(
                f"recipe {name!r}: timestep {changes['timestep']} is outside the MODEL's 0..{schedule.train_steps - 1} "
                f"({schedule.train_steps} training steps)"
            )
    elif steps:
        changes["steps"] = steps
    try:
        recipe = dataclasses.replace(base, **changes)
        recipe.timesteps()
    except ValueError as e:  # ScheduleError, Recipe's own field checks, lcm_timesteps' step range
        raise ScheduleError(f"recipe {name!r}: {e}") from e
    return recipe


def pixart_denoiser(
    model: torch.nn.Module,
    caption: Tensor,
    caption_mask: Tensor | None = None,
    negative: Tensor | None = None,
    negative_mask: Tensor | None = None,
    cfg: float = 1.0,
) -> Denoiser:
    """A ``Denoiser`` on a ``PixArtTransformer``: its first C_in output channels (the learned variance dropped),
    guided as ``uncond + cfg (cond - uncond)`` when ``cfg > 1`` (diffusers' rule; ``negative`` is then required).

    caption: (B, L, caption_channels), caption_mask (B, L); negative/negative_mask likewise (any L).
    """
    guided = cfg > 1.0
    if guided and negative is None:
        raise ValueError(f"pixart_denoiser: cfg {cfg} > 1 needs negative caption states")
    channels = model.config.in_channels

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        cond = model(x, t, caption, caption_mask)[:, :channels]
        if not guided:
            return cond
        uncond = model(x, t, negative, negative_mask)[:, :channels]
        return guidance(uncond, cond, cfg)

    return denoise


def sample(
    recipe: Recipe,
    denoise: Denoiser,
    noise: Tensor,
    generator: torch.Generator | None = None,
    timesteps: Sequence[int] | None = None,
) -> Tensor:
    """Run ``recipe`` from unit-variance ``noise`` (B, C_in, H, W); returns x_0 (B, C_in, H, W).

    generator: the LCM solver's noise between steps. timesteps: override ``recipe.timesteps()``.
    """
    timesteps = list(recipe.timesteps() if timesteps is None else timesteps)
    if recipe.solver == "one_step":
        return sample_one_step(denoise, noise, recipe.schedule, timesteps[0], recipe.clip_sample)
    if recipe.solver == "lcm":
        return sample_lcm(denoise, noise, recipe.schedule, timesteps, generator)
    return sample_dpmpp_2m(denoise, noise, recipe.schedule, timesteps)


def sample_two_stage(recipe: Recipe, stage1: Denoiser, stage2: Denoiser, noise: Tensor, handover: float) -> Tensor:
    """Two expert checkpoints (PixArt-Sigma-900M v0.7 stage-1 / stage-2): ``stage1`` runs the first
    ``round(handover * steps)`` DPM-Solver++ steps, ``stage2`` the rest with a fresh solver history, as two
    pipelines (or two KSamplerAdvanced nodes with start/end steps) do."""
    if recipe.solver != "dpmpp_2m":
        raise ValueError(f"sample_two_stage: needs a dpmpp_2m recipe, got {recipe.solver!r}")
    timesteps = recipe.timesteps()
    split = round(handover * len(timesteps))
    if not 0 < split < len(timesteps):
        raise ValueError(f"sample_two_stage: handover {handover} of {len(timesteps)} steps leaves a stage empty")
    x = sample_dpmpp_2m(stage1, noise, recipe.schedule, timesteps[:split], end_timestep=timesteps[split])
    return sample_dpmpp_2m(stage2, x, recipe.schedule, timesteps[split:])
