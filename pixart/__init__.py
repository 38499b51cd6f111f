"""PixArt-Σ / PixArt-α diffusion transformer with KV token compression, in plain PyTorch (no ComfyUI imports)."""

from .checkpoints import CheckpointError, read_checkpoint
from .config import VARIANTS, KVCompress, PixArtConfig, parse_layers
from .loader import load_dit
from .model import PixArtTransformer

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "KVCompress",
    "PixArtConfig",
    "PixArtTransformer",
    "load_dit",
    "parse_layers",
    "read_checkpoint",
]
