"""PixArt ControlNet-Transformer (PixArt-delta): the model, how it drives a base model, and its file readers."""

from .files import load_controlnet, read_controlnet
from .model import (
    ControlNetConfig,
    PixArtControlNet,
    add_to_block_inputs,
    control_hook,
    control_residuals,
    embed_hint,
)

__all__ = [
    "ControlNetConfig",
    "PixArtControlNet",
    "add_to_block_inputs",
    "control_hook",
    "control_residuals",
    "embed_hint",
    "load_controlnet",
    "read_controlnet",
]
