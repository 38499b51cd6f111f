"""ComfyUI nodes of PixArt Sigma (V3 node API, ``comfy_api.v0_0_2``); imported by the pack's top-level
``__init__.py`` inside ComfyUI only, which hands ComfyUI :func:`comfy_entrypoint`."""

from __future__ import annotations

from .cache import PixArtSigmaCache
from .clip_encode import PixArtSigmaCLIPTextEncode
from .controlnet import PixArtSigmaControlNetLoader
from .dit import PixArtSigmaDiTLoader
from .lora_loader import PixArtSigmaLoraLoader
from .node_api import ComfyExtension, io
from .resolution import PixArtSigmaResolution
from .sampler import PixArtSigmaSampler
from .schedule import PixArtSigmaFewStepSchedule, PixArtSigmaNoiseSchedule, register_scheduler
from .t5 import PixArtSigmaT5Loader, PixArtSigmaTextEncode
from .training import TRAINING_NODES

NODES: list[type[io.ComfyNode]] = [
    PixArtSigmaT5Loader,
    PixArtSigmaTextEncode,
    PixArtSigmaCLIPTextEncode,
    PixArtSigmaDiTLoader,
    PixArtSigmaSampler,
    PixArtSigmaResolution,
    PixArtSigmaLoraLoader,
    PixArtSigmaFewStepSchedule,
    PixArtSigmaNoiseSchedule,
    PixArtSigmaCache,
    PixArtSigmaControlNetLoader,
    *TRAINING_NODES,
]


class PixArtSigmaExtension(ComfyExtension):
    """The pack's node list for ComfyUI."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> PixArtSigmaExtension:
    """ComfyUI's V3 entry point; registers the ``pixart_dpm_solver`` scheduler before ComfyUI reads the schemas."""
    register_scheduler()
    return PixArtSigmaExtension()


__all__ = ["NODES", "PixArtSigmaExtension", "comfy_entrypoint"]
