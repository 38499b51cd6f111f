"""ComfyUI nodes of PixArt Sigma (V1 node API); imported by the pack's top-level __init__.py inside ComfyUI only.

Display names come from each class's ``TITLE``. The LoRA loader lives in its own file and is registered when present.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .dit_loader import PixArtSigmaDiTLoader
from .resolution import PixArtSigmaResolution
from .sampler import PixArtSigmaSampler
from .t5_loader import PixArtSigmaT5Loader
from .text_encode import PixArtSigmaTextEncode

NODES: list[type] = [
    PixArtSigmaT5Loader,
    PixArtSigmaTextEncode,
    PixArtSigmaDiTLoader,
    PixArtSigmaSampler,
    PixArtSigmaResolution,
]
if (Path(__file__).parent / "lora_loader.py").is_file():
    NODES.append(importlib.import_module(".lora_loader", __name__).PixArtSigmaLoraLoader)

NODE_CLASS_MAPPINGS = {node.__name__: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.__name__: node.TITLE for node in NODES}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
