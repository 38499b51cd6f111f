"""Fine-tuning PixArt as the reference trains it (okotaku/pixartengine, diffusers' PixArt scripts): the objective,
LoRA equal to PEFT's, the optimiser step, presets, and savers for every format the pack and diffusers load.

Data (images, captions, VAE, T5) is the caller's: the API takes latents (B, C_in, H, W) already scaled by the VAE
factor, caption states (B, L, caption_channels) and caption masks (B, L).
"""

from .lora import ATTENTION_MODULES, LoraAdapter, LoraLayer, target_modules
from .objective import LossTerms, ScheduleTables, diffusion_loss, sample_timesteps, schedule_tables, vb_bits
from .save import (
    OutputExistsError,
    save_full_diffusers,
    save_full_official,
    save_lora_file,
    save_peft_folder,
)
from .settings import PRESETS, TrainingError, TrainSettings, preset
from .trainer import Trainer, checkpoint_block, warmup_factor

__all__ = [
    "ATTENTION_MODULES",
    "PRESETS",
    "LoraAdapter",
    "LoraLayer",
    "LossTerms",
    "OutputExistsError",
    "ScheduleTables",
    "Trainer",
    "TrainSettings",
    "TrainingError",
    "checkpoint_block",
    "diffusion_loss",
    "preset",
    "sample_timesteps",
    "save_full_diffusers",
    "save_full_official",
    "save_lora_file",
    "save_peft_folder",
    "schedule_tables",
    "target_modules",
    "vb_bits",
    "warmup_factor",
]
