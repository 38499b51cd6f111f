"""Sampling recipes of PixArt checkpoints (few-step distilled, v-prediction / zero-SNR), in plain PyTorch."""

from .recipes import RECIPES, Recipe, model_recipe, pixart_denoiser, sample, sample_two_stage
from .schedules import (
    NoiseSchedule,
    dpm_solver_schedule,
    lcm_boundary,
    lcm_timesteps,
    max_spaced_steps,
    spaced_timesteps,
    validate_schedule,
)
from .solvers import guidance, lcm_steps, one_step, predict_x0, sample_dpmpp_2m, sample_lcm, sample_one_step

__all__ = [
    "RECIPES",
    "NoiseSchedule",
    "Recipe",
    "dpm_solver_schedule",
    "guidance",
    "lcm_boundary",
    "lcm_steps",
    "lcm_timesteps",
    "max_spaced_steps",
    "model_recipe",
    "one_step",
    "pixart_denoiser",
    "predict_x0",
    "sample",
    "sample_dpmpp_2m",
    "sample_lcm",
    "sample_one_step",
    "sample_two_stage",
    "spaced_timesteps",
    "validate_schedule",
]
