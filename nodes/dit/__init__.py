"""The DiT family: PixArt Sigma DiT Loader (loader.py), the MODEL it gives ComfyUI with its noise schedule
(model.py) and ComfyUI's per-block machinery on it (blocks.py)."""

from .loader import PixArtSigmaDiTLoader

__all__ = ["PixArtSigmaDiTLoader"]
