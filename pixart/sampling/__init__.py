"""Sampling recipes of PixArt checkpoints (few-step distilled, v-prediction / zero-SNR), in plain PyTorch."""

from .recipes import RECIPES, Recipe, pixart_denoiser, sample, sample_two_stage
from .schedules import NoiseSchedule, lcm_boundary, lcm_timesteps, spaced_timesteps
from .solvers import guidance, lcm_steps, one_step, predict_x0, sample_dpmpp_2m, sample_lcm, sample_one_step

__all__ = [
    "RECIPES",
    "NoiseSchedule",
    "Recipe",
    "guidance",
    "lcm_boundary",
    "lcm_steps",
    "lcm_timesteps",
    "one_step",
    "pixart_denoiser",
    "predict_x0",
    "sample",
    "sample_dpmpp_2m",
    "sample_lcm",
    "sample_one_step",
    "sample_two_stage",
    "spaced_timesteps",
]
