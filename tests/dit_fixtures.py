"""Tiny random PixArt transformers built with diffusers (the reference), and writers for every checkpoint format."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pixart import PixArtConfig
from pixart.checkpoints.keymap import diffusers_config, diffusers_to_official
from pixart.embeddings import sincos_2d

# Tiny architecture: 2 blocks, 3 heads of 32 (width 96, divisible by 3 for alpha's micro-conditions), 48 caption
# channels.
TINY = {"depth": 2, "num_heads": 3, "head_dim": 32, "caption_channels": 48, "sample_size": 16, "pe_interpolation": 1.0}


def tiny_config(micro: bool = False, **changes) -> PixArtConfig:
    """Our config matching ``reference_model`` with the same arguments."""
    fields = {
        "depth": TINY["depth"],
        "hidden_size": TINY["num_heads"] * TINY["head_dim"],
        "num_heads": TINY["num_heads"],
        "caption_channels": TINY["caption_channels"],
        "sample_size": TINY["sample_size"],
        "pe_interpolation": TINY["pe_interpolation"],
        "micro_conditions": micro,
        "family": "alpha" if micro else "sigma",
        "caption_tokens": 120 if micro else 300,
    }
    fields.update(changes)
    return PixArtConfig(**fields)


def reference_model(config: PixArtConfig, seed: int = 0):
    """A seeded diffusers ``PixArtTransformer2DModel`` with every weight randomised (no zero-init shortcuts)."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(**diffusers_config(config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def official_state_dict(reference, config: PixArtConfig, training_extras: bool = True) -> dict[str, torch.Tensor]:
    """The reference's weights under official names, with the position table and null caption official files carry."""
    state_dict, unknown = diffusers_to_official(reference.state_dict())
    assert not unknown
    state_dict = {k: v.clone().contiguous() for k, v in state_dict.items()}
    if training_extras:
        g = config.base_grid
        table = sincos_2d(config.hidden_size, g, g, g, config.pe_interpolation).float()[None]
        state_dict["pos_embed"] = table
        state_dict["y_embedder.y_embedding"] = torch.randn(config.caption_tokens, config.caption_channels)
    return state_dict


def write_official_pth(path: Path, state_dict: dict, wrapper: str | None = "state_dict") -> Path:
    """An official-style ``.pth``: ``{"state_dict": ...}``, another wrapper, or the plain dict."""
    torch.save({wrapper: state_dict} if wrapper else state_dict, path)
    return path


def write_safetensors(path: Path, state_dict: dict, prefix: str = "") -> Path:
    save_file({prefix + k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def write_diffusers_folder(path: Path, reference, max_shard_size: str | None = None, family: str | None = None) -> Path:
    """``save_pretrained`` output (sharded when ``max_shard_size`` is small); optionally inside a pipeline folder."""
    folder = path / "transformer" if family else path
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    reference.save_pretrained(folder, safe_serialization=True, **kwargs)
    if family:
        name = {"sigma": "PixArtSigmaPipeline", "alpha": "PixArtAlphaPipeline"}[family]
        (path / "model_index.json").write_text(json.dumps({"_class_name": name}))
    return path


def inputs(config: PixArtConfig, height: int, width: int, batch: int = 2, tokens: int = 7, seed: int = 1):
    """Latents, timesteps, captions and a mask with a different caption length per sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, height, width, generator=g)
    t = torch.tensor([999.0, 10.0, 500.0, 250.0][:batch])
    y = torch.randn(batch, tokens, config.caption_channels, generator=g)
    mask = torch.zeros(batch, tokens)
    for i in range(batch):
        mask[i, : max(1, tokens - 3 * i)] = 1
    return x, t, y, mask


def reference_forward(reference, x, t, y, mask, micro: bool = False) -> torch.Tensor:
    """diffusers' forward with the pipeline's conventions (resolution in pixels, aspect ratio H/W)."""
    b, _, h, w = x.shape
    cond = {"resolution": None, "aspect_ratio": None}
    if micro:
        cond = {
            "resolution": torch.tensor([[8.0 * h, 8.0 * w]]).repeat(b, 1),
            "aspect_ratio": torch.tensor([[h / w]]).repeat(b, 1),
        }
    with torch.no_grad():
        return reference(
            x, encoder_hidden_states=y, timestep=t, encoder_attention_mask=mask, added_cond_kwargs=cond
        ).sample


def max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
