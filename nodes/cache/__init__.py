"""The cache family: PixArt Sigma Cache (node.py) and the per-run state that drives its step cache while ComfyUI
samples (run.py)."""

from .node import PixArtSigmaCache

__all__ = ["PixArtSigmaCache"]
