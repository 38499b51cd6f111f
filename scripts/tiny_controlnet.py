"""Tiny random PixArt ControlNet files for the tests and the ``--tiny`` workflow runner (scripts/tiny_weights.py).

A ControlNet here is what the official ``ControlPixArtHalf`` trains from: copies of the base model's first blocks
(perturbed, so that they differ from the base), ``before_proj`` on copy 0 and ``after_proj`` on every copy, random or
zero. Writers give the official layout (``controlnet.{i}.*``, optionally with the base model under ``base_model.``)
and the diffusers research-project adapter layout (``controlnet_blocks.{i}.*``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pixart.checkpoints.keymap import official_to_diffusers


def controlnet_state_dict(
    base: dict[str, Tensor], copies: int, seed: int = 0, scale: float = 0.02, zero_projections: bool = False
) -> dict[str, Tensor]:
    """Official-layout ControlNet weights from an official-keyed base state dict.

    Args:
        base: the base model (``blocks.{i}.*`` keys).
        copies: N, blocks 0..N-1 copied.
        scale: std of the noise added to every copied weight and of the random projections.
        zero_projections: before_proj and after_proj all zeros (the state a ControlNet starts training from).
    """
    g = torch.Generator().manual_seed(seed)
    width = base["blocks.0.attn.proj.weight"].shape[0]
    out: dict[str, Tensor] = {}
    for i in range(copies):
        prefix = f"blocks.{i}."
        for key, tensor in base.items():
            if key.startswith(prefix):
                noise = torch.randn(tensor.shape, generator=g) * scale
                out[f"controlnet.{i}.copied_block.{key[len(prefix) :]}"] = (tensor.float() + noise).to(tensor.dtype)
        names = ("before_proj", "after_proj") if i == 0 else ("after_proj",)
        for name in names:
            weight = torch.randn(width, width, generator=g) * scale
            bias = torch.randn(width, generator=g) * scale
            if zero_projections:
                weight, bias = torch.zeros_like(weight), torch.zeros_like(bias)
            out[f"controlnet.{i}.{name}.weight"] = weight
            out[f"controlnet.{i}.{name}.bias"] = bias
    return out


def adapter_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same ControlNet in the diffusers research-project layout (``PixArtControlNetAdapterModel``)."""
    out: dict[str, Tensor] = {}
    blocks: dict[str, Tensor] = {}
    for key, tensor in official.items():
        _, index, part, rest = key.split(".", 3)
        if part == "copied_block":
            blocks[f"blocks.{index}.{rest}"] = tensor
        else:
            out[f"controlnet_blocks.{index}.{part}.{rest}"] = tensor
    for key, tensor in official_to_diffusers(blocks).items():
        _, index, rest = key.split(".", 2)  # transformer_blocks.{i}.<diffusers name>
        out[f"controlnet_blocks.{index}.transformer_block.{rest}"] = tensor.contiguous()
    return out


def whole_model(controlnet: dict[str, Tensor], base: dict[str, Tensor], prefix: str = "base_model.") -> dict:
    """A whole ControlNet model's state dict: the ControlNet beside the base model's weights under ``prefix``
    (``base_model.`` official ``ControlPixArtHalf``; ``transformer.`` with ``controlnet.``-prefixed adapter keys for
    diffusers' ``PixArtControlNetTransformerModel``)."""
    return {**controlnet, **{prefix + k: v for k, v in base.items()}}


def tiny_controlnet(base: dict[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """The --tiny runner's ControlNet for a tiny DiT file: one copy, random projections."""
    return controlnet_state_dict(base, copies=1, seed=seed)
