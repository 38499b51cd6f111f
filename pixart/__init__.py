"""PixArt-Σ / PixArt-α diffusion transformer with KV token compression, in plain PyTorch (no ComfyUI imports)."""

from .checkpoints import CheckpointError, read_checkpoint
from .config import VARIANTS, KVCompress, PixArtConfig, parse_layers
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
    "VARIANTS",
    "CheckpointError",
    "KVCompress",
    "PixArtConfig",
    "PixArtTransformer",
    "load_dit",
    "parse_layers",
    "read_checkpoint",
    *_TEXT_ENCODER_NAMES,
]
