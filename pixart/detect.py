"""Reading a PixArt architecture off a state dict with official keys: sizes come from tensor shapes.

What shapes cannot tell (heads, base resolution, position-embedding scale, Sigma or alpha) comes from, in order: an
explicit variant, the file's own hints (a diffusers ``config.json``, the training-time position table and null caption),
and the released-variant presets -- and a log warning says so whenever a preset had to be assumed.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import fields

import torch
from torch import Tensor

from .config import CAPTION_TOKENS, VARIANTS, PixArtConfig
from .embeddings import sincos_2d
from .errors import CheckpointError, listing, short

log = logging.getLogger(__name__)

REQUIRED_KEYS = (
    "x_embedder.proj.weight",
    "t_embedder.mlp.0.weight",
    "t_block.1.weight",
    "y_embedder.y_proj.fc1.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.mlp.fc1.weight",
    "final_layer.linear.weight",
)
# Tensors official checkpoints carry that inference does not use: the training-resolution position table and the
# null caption used for caption dropout. They inform detection, then are dropped.
TRAINING_ONLY_KEYS = ("pos_embed", "y_embedder.y_embedding")
OTHER_FAMILIES = {
    "input_blocks.": "a Stable Diffusion UNet (LDM layout)",
    "down_blocks.": "a UNet in diffusers layout",
    "double_blocks.": "a Flux transformer",
    "joint_blocks.": "an SD3 transformer",
    "encoder.block.": "a T5 text encoder",
    "encoder.down.": "a VAE",
    "decoder.up.": "a VAE",
}
HEAD_DIM = 72  # every released PixArt model: 16 heads of 72 channels
# Bounds on what a file may declare, far above every released model (depth 28, width 1152, p 2, grid 128, L 300):
# sizes are checked against these before any model or table is built.
MAX_DEPTH = 256
MAX_WIDTH = 16384  # hidden size, caption channels, MLP width
MAX_CHANNELS = 256  # latent channels in and out
MAX_PATCH = 16
MAX_GRID = 512  # token grid side of the base resolution (pos_embed holds MAX_GRID**2 rows at most)
MAX_CAPTION_TOKENS = 4096
_BLOCK = re.compile(r"^blocks\.(\d{1,9})\.")


def _describe_foreign(keys: list[str]) -> str:
    for marker, what in OTHER_FAMILIES.items():
        if any(marker in k for k in keys):
            return f"; it looks like {what}"
    return ""


def check_is_pixart(state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointError unless the state dict has the PixArt transformer's core tensors."""
    missing = [k for k in REQUIRED_KEYS if k not in state_dict]
    if missing:
        keys = sorted(state_dict)
        raise CheckpointError(
            f"{source}: not a PixArt transformer checkpoint{_describe_foreign(keys)}: no {missing[0]!r} "
            f"(and {len(missing) - 1} more core tensors missing; it has {len(keys)} tensors, e.g. {listing(keys, 2)}). "
            "Pick a PixArt-Sigma/alpha transformer (e.g. PixArt-Sigma-XL-2-1024-MS.pth) or a diffusers folder."
        )


def _shape(state_dict: Mapping[str, Tensor], key: str, source: str, ndim: int, limit: int) -> tuple[int, ...]:
    """The shape of ``state_dict[key]``, which must have ``ndim`` dimensions, each in 1..``limit``."""
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim or not all(1 <= s <= limit for s in shape):
        raise CheckpointError(f"{source}: {key!r} is {short(shape, 60)}, expected {ndim} dimensions, each 1..{limit}")
    return shape


def _block_indices(state_dict: Mapping[str, Tensor], source: str) -> list[int]:
    """Block indices 0..depth-1, checked to be contiguous, bounded and each carrying its attention weight."""
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))})
    if blocks[-1] >= MAX_DEPTH:
        raise CheckpointError(f"{source}: names block {blocks[-1]}, expected at most {MAX_DEPTH} blocks")
    incomplete = [i for i in range(blocks[-1] + 1) if f"blocks.{i}.attn.qkv.weight" not in state_dict]
    if incomplete:
        raise CheckpointError(
            f"{source}: has tensors of blocks 0..{blocks[-1]} but no attention weights for blocks {listing(incomplete)}"
        )
    return blocks


def shape_fields(state_dict: Mapping[str, Tensor], source: str = "state dict") -> dict:
    """The config fields that tensor shapes determine, each checked for rank and bounds."""
    hidden, in_channels, patch, patch_w = _shape(state_dict, "x_embedder.proj.weight", source, 4, MAX_WIDTH)
    if in_channels > MAX_CHANNELS or patch > MAX_PATCH or patch_w != patch:
        raise CheckpointError(
            f"{source}: 'x_embedder.proj.weight' is {(hidden, in_channels, patch, patch_w)}, expected (C, C_in, p, p) "
            f"with C_in <= {MAX_CHANNELS} and p <= {MAX_PATCH}"
        )
    blocks = _block_indices(state_dict, source)
    conv_layers = tuple(i for i in blocks if f"blocks.{i}.attn.sr.weight" in state_dict)
    conv_factor = 1
    if conv_layers:
        conv_factor = _shape(state_dict, f"blocks.{conv_layers[0]}.attn.sr.weight", source, 4, MAX_WIDTH)[-1]
    out_rows = _shape(state_dict, "final_layer.linear.weight", source, 2, MAX_WIDTH)[0]
    if out_rows % (patch * patch) or out_rows // (patch * patch) > MAX_CHANNELS:
        raise CheckpointError(
            f"{source}: 'final_layer.linear.weight' has {out_rows} rows, expected p*p*C_out = {patch * patch}*C_out "
            f"with C_out <= {MAX_CHANNELS}"
        )
    return {
        "depth": blocks[-1] + 1,
        "hidden_size": hidden,
        "patch_size": patch,
        "in_channels": in_channels,
        "out_channels": out_rows // (patch * patch),
        "caption_channels": _shape(state_dict, "y_embedder.y_proj.fc1.weight", source, 2, MAX_WIDTH)[1],
        "mlp_ratio": _shape(state_dict, "blocks.0.mlp.fc1.weight", source, 2, MAX_WIDTH)[0] / hidden,
        "micro_conditions": "csize_embedder.mlp.0.weight" in state_dict,
        "conv_kv_layers": conv_layers,
        "conv_kv_factor": conv_factor,
    }


def _pe_interpolation_from_table(table: Tensor, hidden: int, grid: int) -> float | None:
    """The position-embedding scale that reproduces a stored (1, grid^2, C) sin-cos table, if one of the usual does."""
    for scale in (0.5, 1.0, 2.0, 4.0, 8.0):
        expected = sincos_2d(hidden, grid, grid, grid, scale)
        if torch.allclose(table.reshape(-1, hidden).double(), expected, atol=1e-3):
            return scale
    return None


def file_hints(state_dict: Mapping[str, Tensor], shapes: dict, source: str = "state dict") -> dict:
    """Fields the training-only tensors reveal: base resolution and scale (pos_embed), Sigma or alpha (null caption).

    Both tensors are checked against the model's width before anything is computed from them: a position table
    must be (1, grid^2, C) with grid <= MAX_GRID, the null caption (L, caption_channels) with L <= MAX_CAPTION_TOKENS.
    """
    hints: dict = {}
    if "y_embedder.y_embedding" in state_dict:
        tokens, width = _shape(state_dict, "y_embedder.y_embedding", source, 2, MAX_WIDTH)
        if tokens > MAX_CAPTION_TOKENS or width != shapes["caption_channels"]:
            raise CheckpointError(
                f"{source}: 'y_embedder.y_embedding' is {(tokens, width)}, expected (L, {shapes['caption_channels']}) "
                f"with L <= {MAX_CAPTION_TOKENS}"
            )
        hints["caption_tokens"] = tokens
        hints["family"] = "alpha" if tokens == CAPTION_TOKENS["alpha"] else "sigma"
    if "pos_embed" in state_dict:
        shape = tuple(state_dict["pos_embed"].shape)
        n = shape[1] if len(shape) == 3 else 0
        grid = math.isqrt(n)
        if shape != (1, n, shapes["hidden_size"]) or grid * grid != n or not 1 <= grid <= MAX_GRID:
            raise CheckpointError(
                f"{source}: 'pos_embed' is {short(shape, 60)}, expected (1, grid*grid, {shapes['hidden_size']}) with "
                f"grid 1..{MAX_GRID}"
            )
        hints["sample_size"] = grid * shapes["patch_size"]
        scale = _pe_interpolation_from_table(state_dict["pos_embed"], shapes["hidden_size"], grid)
        if scale is not None:
            hints["pe_interpolation"] = scale
    if shapes["micro_conditions"]:
        hints.setdefault("family", "alpha")
    return hints


def _preset_for(family: str, sample_size: int) -> PixArtConfig | None:
    for preset in VARIANTS.values():
        if preset.family == family and preset.sample_size == sample_size:
            return preset
    return None


def _resolve_variant(variant: str | Mapping, source: str) -> tuple[PixArtConfig | None, dict]:
    """An explicit preset (or None for auto) and explicit field overrides."""
    if isinstance(variant, Mapping):
        known = {f.name for f in fields(PixArtConfig)} | {"variant"}
        unknown = sorted(set(variant) - known)
        if unknown:
            raise CheckpointError(f"{source}: unknown hyperparameters {unknown}; known: {sorted(known)}")
        overrides = {k: v for k, v in variant.items() if k != "variant"}
        name = variant.get("variant", "auto")
    else:
        overrides, name = {}, variant
    if name == "auto":
        return None, overrides
    if name not in VARIANTS:
        raise CheckpointError(f"{source}: unknown variant {name!r}; expected 'auto' or one of {sorted(VARIANTS)}")
    return VARIANTS[name], overrides


def _auto_fields(fields_: dict, source: str) -> PixArtConfig | None:
    """Fill family, base resolution, scale and token count when no preset was asked for; returns the matching preset."""
    if "family" not in fields_:
        fields_["family"] = "sigma"
        log.warning(
            "%s: cannot tell PixArt-Sigma from PixArt-alpha from the weights; assuming Sigma (set variant to override)",
            source,
        )
    if "sample_size" not in fields_:
        fields_["sample_size"] = 128
        log.warning(
            "%s: the file does not record its base resolution; assuming 1024 px (set variant to override)", source
        )
    preset = _preset_for(fields_["family"], fields_["sample_size"])
    if "pe_interpolation" not in fields_ and preset is None:
        fields_["pe_interpolation"] = float(max(fields_["sample_size"] // 64, 1))
        log.warning("%s: position-embedding scale not recorded; using %s", source, fields_["pe_interpolation"])
    if fields_["family"] == "alpha":
        fields_.setdefault("caption_tokens", 120)
    return preset


def detect_config(
    state_dict: Mapping[str, Tensor], source: str, variant: str | Mapping = "auto", hints: Mapping | None = None
) -> PixArtConfig:
    """The architecture of an official-keyed PixArt state dict.

    Args:
        state_dict: official keys (training-only tensors may still be present; they are read, not required).
        source: file or folder name for messages.
        variant: "auto", a preset name from ``VARIANTS``, or a dict of fields (optionally with ``"variant"``, a
            preset name the fields start from). An explicit preset wins over what the file suggests.
        hints: fields the file's side data gave (e.g. from a diffusers config.json).
    """
    check_is_pixart(state_dict, source)
    shapes = shape_fields(state_dict, source)
    preset, overrides = _resolve_variant(variant, source)
    clashes = {k: (v, shapes[k]) for k, v in overrides.items() if k in shapes and v != shapes[k]}
    if preset is not None:
        for k in ("hidden_size", "caption_channels"):
            if k not in overrides and getattr(preset, k) != shapes[k]:
                clashes[k] = (getattr(preset, k), shapes[k])
    if clashes:
        detail = ", ".join(f"{k}: asked {a}, file has {b}" for k, (a, b) in clashes.items())
        raise CheckpointError(f"{source}: the requested variant does not fit the weights ({detail})")
    if preset is None:
        fields_ = {**file_hints(state_dict, shapes, source), **(hints or {}), **shapes, **overrides}
        preset = _auto_fields(fields_, source)
    else:
        fields_ = {**shapes, **overrides}
    if "num_heads" not in fields_ and (preset is None or preset.hidden_size != shapes["hidden_size"]):
        if shapes["hidden_size"] % HEAD_DIM:
            raise CheckpointError(
                f"{source}: cannot tell the number of attention heads of a {shapes['hidden_size']}-wide model "
                f"(released models use heads of {HEAD_DIM}); set variant={{'num_heads': ...}}"
            )
        fields_["num_heads"] = shapes["hidden_size"] // HEAD_DIM
    try:
        return (preset or PixArtConfig()).replace(**fields_)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: inconsistent PixArt hyperparameters: {e}") from e
