"""The T5 of PixArt Sigma T5 Loader inside ComfyUI's memory manager: its weights live in a
``comfy.model_patcher.ModelPatcher`` and are loaded with ``load_models_gpu`` before each encode, so ComfyUI counts
them, moves them off the GPU when the DiT needs the room (and back), and unloads them on "unload models" (``/free``).

The T5 is a transformers module without ComfyUI's casting layers, so ComfyUI loads it whole or not at all (no
partial low-VRAM loading). Imports ComfyUI.
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import torch
from torch import nn

from ..pixart.text_encoder import T5PromptEncoder


class T5Weights(nn.Module):
    """The module the patcher manages, holding the transformers T5 as ``t5``: ComfyUI writes its bookkeeping
    (``device``, loaded-weight counters) onto that module, and a transformers model's ``device`` is read-only."""

    def __init__(self, t5: nn.Module):
        super().__init__()
        self.t5 = t5


class ManagedT5:
    """The PIXART_T5 value: a ``T5PromptEncoder`` whose weights ComfyUI places through ``patcher``."""

    def __init__(self, encoder: T5PromptEncoder, load_device: torch.device, offload_device: torch.device):
        encoder.offload_device = None  # ComfyUI decides when the weights leave the GPU
        encoder.device = torch.device(load_device)
        self.encoder = encoder
        self.patcher = comfy.model_patcher.ModelPatcher(
            T5Weights(encoder.model), load_device=load_device, offload_device=offload_device
        )

    @property
    def hidden_size(self) -> int:
        """C, the T5 width."""
        return self.encoder.hidden_size

    @property
    def device(self) -> torch.device:
        """Where the T5 runs when loaded."""
        return self.patcher.load_device

    def encode(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Load the weights through ComfyUI, then ``T5PromptEncoder.encode``: (B, L, C) float32 states on the T5's
        device and the (B, L) int64 mask (1 real token, 0 padding)."""
        mm.load_models_gpu([self.patcher])
        return self.encoder.encode(prompts, max_length=max_length)

    def __repr__(self) -> str:
        return f"ManagedT5({self.encoder!r})"
