"""Sampling recipes of PixArt checkpoints (few-step distilled, v-prediction / zero-SNR), in plain PyTorch."""

from .recipes import RECIPES, Recipe, pixart_denoiser, sample, sample_two_stage
from .schedules import NoiseSchedule, lcm_boundary, lcm_timesteps, spaced_timesteps
from .solvers import predict_x0, sample_dpmpp_2m, sample_lcm, sample_one_step

__all__ = [
    "RECIPES",
    "NoiseSchedule",
    "Recipe",
    "lcm_boundary",
    "lcm_timesteps",
    "pixart_denoiser",
    "predict_x0",
    "sample",
    "sample_dpmpp_2m",
    "sample_lcm",
    "sample_one_step",
    "sample_two_stage",
    "spaced_timesteps",
]
