"""PixArt-Sigma and PixArt-alpha diffusion transformers with KV token compression, in plain PyTorch (no ComfyUI)."""

from .checkpoints import pipeline_noise_schedule, read_checkpoint
from .config import CAPTION_TOKENS, VARIANTS, KVCompress, PixArtConfig, parse_layers
from .errors import CheckpointError, LoraError, PixArtError, SettingError, SizeError, T5Error
from .loader import load_dit
from .model import PixArtTransformer

_TEXT_ENCODER_NAMES = ("load_t5", "T5PromptEncoder", "check_caption_width")


def __getattr__(name: str):
    """The T5 entry points, imported on first use (transformers takes seconds to import)."""
    if name in _TEXT_ENCODER_NAMES:
        from . import text_encoder

        return getattr(text_encoder, name)
    raise AttributeError(f"module 'pixart' has no attribute {name!r}")


__all__ = [
    "CAPTION_TOKENS",
    "VARIANTS",
    "CheckpointError",
    "KVCompress",
    "LoraError",
    "PixArtConfig",
    "PixArtError",
    "PixArtTransformer",
    "SettingError",
    "SizeError",
    "load_dit",
    "parse_layers",
    "pipeline_noise_schedule",
    "read_checkpoint",
    "T5Error",
    *_TEXT_ENCODER_NAMES,
]
