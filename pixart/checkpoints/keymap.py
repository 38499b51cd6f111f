"""Names of PixArt parameters in the official code (ours) and in diffusers' ``PixArtTransformer2DModel``.

Our modules keep the official names, so official files load as they are. diffusers splits the fused projections
(``attn.qkv`` into ``attn1.to_q/to_k/to_v``, ``cross_attn.kv_linear`` into ``attn2.to_k/to_v``); the tables below
say which rows of a fused official weight each diffusers module holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import CheckpointError


@dataclass(frozen=True)
class ModuleTarget:
    """Where a diffusers module lives in the official layout: rows ``chunk`` of ``chunks`` equal parts of ``module``."""

    module: str
    chunk: int = 0
    chunks: int = 1


# diffusers module -> official module, for modules outside the blocks.
_GLOBAL_MODULES = {
    "pos_embed.proj": "x_embedder.proj",
    "adaln_single.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "adaln_single.linear": "t_block.1",
    "adaln_single.emb.resolution_embedder.linear_1": "csize_embedder.mlp.0",
    "adaln_single.emb.resolution_embedder.linear_2": "csize_embedder.mlp.2",
    "adaln_single.emb.aspect_ratio_embedder.linear_1": "ar_embedder.mlp.0",
    "adaln_single.emb.aspect_ratio_embedder.linear_2": "ar_embedder.mlp.2",
    "caption_projection.linear_1": "y_embedder.y_proj.fc1",
    "caption_projection.linear_2": "y_embedder.y_proj.fc2",
    "proj_out": "final_layer.linear",
}

# diffusers module inside transformer_blocks.N -> (official module inside blocks.N, chunk, chunks).
_BLOCK_MODULES = {
    "attn1.to_q": ("attn.qkv", 0, 3),
    "attn1.to_k": ("attn.qkv", 1, 3),
    "attn1.to_v": ("attn.qkv", 2, 3),
    "attn1.to_out.0": ("attn.proj", 0, 1),
    "attn2.to_q": ("cross_attn.q_linear", 0, 1),
    "attn2.to_k": ("cross_attn.kv_linear", 0, 2),
    "attn2.to_v": ("cross_attn.kv_linear", 1, 2),
    "attn2.to_out.0": ("cross_attn.proj", 0, 1),
    "ff.net.0.proj": ("mlp.fc1", 0, 1),
    "ff.net.2": ("mlp.fc2", 0, 1),
}

_PARAMETERS = {"scale_shift_table": "final_layer.scale_shift_table"}
_BLOCK_PARAMETERS = {"scale_shift_table": "scale_shift_table"}

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_OFFICIAL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

# Prefixes other tools put in front of the transformer's own names (each defined here once).
COMFYUI_PREFIX = "model.diffusion_model."  # ComfyUI-saved checkpoints
DIFFUSION_MODEL_PREFIX = "diffusion_model."  # ComfyUI's ModelPatcher keys, some LoRAs
PIPELINE_PREFIX = "transformer."  # the transformer component of a diffusers pipeline (save_lora_weights, exports)

# Markers of the diffusers layout: any key starting with one of these.
DIFFUSERS_PREFIXES = ("transformer_blocks.", "adaln_single.", "caption_projection.", "pos_embed.proj.")


def diffusers_module_target(name: str) -> ModuleTarget | None:
    """The official module (and row chunk) behind a diffusers module name such as
    ``transformer_blocks.3.attn1.to_k``; None if the name is not a PixArt module."""
    if name in _GLOBAL_MODULES:
        return ModuleTarget(_GLOBAL_MODULES[name])
    match = _BLOCK.match(name)
    if match and match.group(2) in _BLOCK_MODULES:
        module, chunk, chunks = _BLOCK_MODULES[match.group(2)]
        return ModuleTarget(f"blocks.{match.group(1)}.{module}", chunk, chunks)
    return None


def diffusers_config(config) -> dict:
    """``PixArtTransformer2DModel(**diffusers_config(config))`` builds diffusers' model of a ``PixArtConfig``."""
    return {
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "num_layers": config.depth,
        "cross_attention_dim": config.hidden_size,
        "sample_size": config.sample_size,
        "patch_size": config.patch_size,
        "caption_channels": config.caption_channels,
        "interpolation_scale": config.pe_interpolation,
        "use_additional_conditions": config.micro_conditions,
    }


def diffusers_module_names() -> tuple[str, ...]:
    """Every diffusers module name with an official counterpart; block modules carry ``{i}`` for the block index."""
    return tuple(_GLOBAL_MODULES) + tuple(f"transformer_blocks.{{i}}.{name}" for name in _BLOCK_MODULES)


def _split_param(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def is_diffusers_layout(keys) -> bool:
    """True when the key set uses diffusers' names."""
    return any(k.startswith(DIFFUSERS_PREFIXES) for k in keys)


def diffusers_to_official(
    state_dict: dict[str, Tensor], source: str = "state dict"
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename (and fuse) a diffusers-keyed state dict to official keys.

    Returns the converted dict and the keys that are not PixArt parameters (left for the caller to report).
    Raises CheckpointError naming ``source`` and the keys when parts to fuse (``to_q``/``to_k``/``to_v`` into
    ``attn.qkv``, ``to_k``/``to_v`` into ``kv_linear``) disagree in shape.
    """
    out: dict[str, Tensor] = {}
    fused: dict[str, list[Tensor | None]] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if key in _PARAMETERS:
            out[_PARAMETERS[key]] = tensor
            continue
        match = _BLOCK.match(key)
        if match and match.group(2) in _BLOCK_PARAMETERS:
            out[f"blocks.{match.group(1)}.{_BLOCK_PARAMETERS[match.group(2)]}"] = tensor
            continue
        module, param = _split_param(key)
        target = diffusers_module_target(module)
        if target is None or param not in ("weight", "bias"):
            unknown.append(key)
            continue
        official = f"{target.module}.{param}"
        if target.chunks == 1:
            out[official] = tensor
        else:
            fused.setdefault(official, [None] * target.chunks)[target.chunk] = tensor
    for official, parts in fused.items():
        if any(p is None for p in parts):
            unknown.append(f"{official} (only {sum(p is not None for p in parts)} of {len(parts)} fused parts present)")
            continue
        shapes = [tuple(p.shape) for p in parts]
        if len(set(shapes)) > 1:
            names = _fused_names(official)
            found = ", ".join(f"{name} {shape}" for name, shape in zip(names, shapes, strict=True))
            raise CheckpointError(
                f"{source}: the parts fused into {official} disagree in shape ({found}); expected equal shapes"
            )
        out[official] = torch.cat(parts, dim=0)
    return out, unknown


def _fused_names(official: str) -> list[str]:
    """The diffusers keys fused into the official key ``official`` (e.g. ``blocks.3.attn.qkv.weight``), in order."""
    module, param = _split_param(official)
    match = _OFFICIAL_BLOCK.match(module)
    sources = _official_module_sources().get(match.group(2), []) if match else []
    names = [""] * len(sources)
    for name, chunk, _ in sources:
        names[chunk] = f"transformer_blocks.{match.group(1)}.{name}.{param}"
    return names


def _official_module_sources() -> dict[str, list[tuple[str, int, int]]]:
    """Inverse tables: official module suffix -> diffusers names with their chunks."""
    inverse: dict[str, list[tuple[str, int, int]]] = {}
    for name, (module, chunk, chunks) in _BLOCK_MODULES.items():
        inverse.setdefault(module, []).append((name, chunk, chunks))
    return inverse


def official_to_diffusers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and split) an official-keyed state dict to diffusers keys. Raises on keys diffusers has no slot for
    (trained KV-compression convolutions, for example)."""
    global_inverse = {v: k for k, v in _GLOBAL_MODULES.items()}
    block_inverse = _official_module_sources()
    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        if key == "final_layer.scale_shift_table":
            out["scale_shift_table"] = tensor
            continue
        module, param = _split_param(key)
        match = _OFFICIAL_BLOCK.match(key)
        if match and match.group(2) == "scale_shift_table":
            out[f"transformer_blocks.{match.group(1)}.scale_shift_table"] = tensor
            continue
        match = _OFFICIAL_BLOCK.match(module)
        if module in global_inverse:
            out[f"{global_inverse[module]}.{param}"] = tensor
        elif match and match.group(2) in block_inverse:
            for name, chunk, chunks in block_inverse[match.group(2)]:
                out[f"transformer_blocks.{match.group(1)}.{name}.{param}"] = tensor.chunk(chunks, dim=0)[chunk]
        else:
            raise KeyError(f"{key!r} has no counterpart in diffusers' PixArtTransformer2DModel")
    return out
