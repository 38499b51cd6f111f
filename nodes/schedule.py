"""PixArt Sigma Few-Step Schedule (SAMPLER + SIGMAS for SamplerCustomAdvanced) and PixArt Sigma Noise Schedule
(a MODEL's prediction type and zero-terminal-SNR), running the ``pixart.sampling`` recipes in ComfyUI; the ComfyUI
glue (model sampling, sampler functions) is in comfy_sampling.py, imported when a node runs."""

from __future__ import annotations

import dataclasses

from ..pixart.errors import ScheduleError
from ..pixart.sampling import RECIPES, NoiseSchedule, model_recipe
from ..pixart.sampling.schedules import PREDICTIONS
from .node_api import CATEGORY, io, schema

WHO = "PixArt Sigma Few-Step Schedule"


def check_prediction(model, recipe_name: str) -> None:
    """ValueError unless the MODEL predicts what the recipe's checkpoint predicts."""
    from .comfy_sampling import prediction_of

    wanted, found = RECIPES[recipe_name].schedule.prediction, prediction_of(model)
    if found != wanted:
        raise ValueError(
            f"{WHO}: recipe {recipe_name!r} is for a {wanted} model, but this MODEL samples as {found}; put "
            f"PixArt Sigma Noise Schedule (prediction {wanted}) before the guider"
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
        from .comfy_sampling import model_noise_schedule, recipe_sampler, recipe_sigmas

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
        from .comfy_sampling import noise_schedule_of, with_noise_schedule

        carried = noise_schedule_of(model) or NoiseSchedule()  # betas from the DiT Loader's pipeline folder, if any
        schedule = dataclasses.replace(carried, prediction=prediction, zero_terminal_snr=zero_terminal_snr)
        return io.NodeOutput(with_noise_schedule(model, schedule))
