"""Reading PixArt ControlNet files into the official key layout plus their architecture.

Layouts:
- official (PixArt-alpha ``ControlPixArtHalf`` / ``ControlPixArtMSHalf``, ``.pth`` or safetensors):
  ``controlnet.{i}.copied_block.*`` (the block's own parameter names), ``controlnet.0.before_proj.*``,
  ``controlnet.{i}.after_proj.*``; a whole model's state dict also holds the base model under ``base_model.``;
- diffusers research project (``examples/research_projects/pixart``, ``PixArtControlNetAdapterModel``):
  ``controlnet_blocks.{i}.before_proj / after_proj / transformer_block.*`` with diffusers block names (mapped through
  ``pixart.checkpoints.keymap``); inside a ``PixArtControlNetTransformerModel`` the adapter sits under
  ``controlnet.`` and the base model under ``transformer.``.
Base-model weights inside a file are split off and not used (the base comes from the DiT loader); a log line says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoints import weight_problems
from ..checkpoints.keymap import diffusers_to_official
from ..detect import HEAD_DIM, MAX_DEPTH, MAX_WIDTH
from ..errors import CheckpointError, listing, short
from ..io import read_weights
from .model import ControlNetConfig, PixArtControlNet

log = logging.getLogger(__name__)

# Wrappers of official training checkpoints: the official inference script loads "state_dict".
WRAPPERS = ("state_dict", "state_dict_ema")
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # a diffusers folder's
BASE_PREFIXES = ("base_model.", "transformer.")  # official whole model, diffusers PixArtControlNetTransformerModel
_OFFICIAL = re.compile(r"^controlnet\.(\d{1,9})\.(copied_block|before_proj|after_proj)\.(.+)$")
_ADAPTER = re.compile(
    r"^(?:controlnet\.)?controlnet_blocks\.(\d{1,9})\.(transformer_block|before_proj|after_proj)\.(.+)$"
)


def _split(tensors: Mapping[str, Tensor], source: str) -> tuple[str, dict[int, dict[str, dict[str, Tensor]]]]:
    """The layout ("official" or "adapter") and {copy: {part: {name inside the part: tensor}}}; base weights dropped."""
    copies: dict[int, dict[str, dict[str, Tensor]]] = {}
    layouts, base, unknown = set(), [], []
    for key, tensor in tensors.items():
        match = _OFFICIAL.match(key) or _ADAPTER.match(key)
        if match is None:
            (base if key.startswith(BASE_PREFIXES) else unknown).append(key)
            continue
        layouts.add("official" if match.re is _OFFICIAL else "adapter")
        index, part, name = int(match.group(1)), match.group(2), match.group(3)
        copies.setdefault(index, {}).setdefault(part, {})[name] = tensor
    if not copies:
        dit = any(k.startswith(("blocks.", "transformer_blocks.")) for k in tensors)
        looks = "; it looks like a PixArt transformer (load it with PixArt Sigma DiT Loader)" if dit else ""
        raise CheckpointError(
            f"{source}: not a PixArt ControlNet: no 'controlnet.{{i}}.copied_block.*' (official) or "
            f"'controlnet_blocks.{{i}}.transformer_block.*' (diffusers) tensors; it has {len(tensors)} tensors, e.g. "
            f"{listing(sorted(tensors), 3)}{looks}"
        )
    if len(layouts) > 1:
        raise CheckpointError(
            f"{source}: mixes the official 'controlnet.' and the diffusers 'controlnet_blocks.' layouts"
        )
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} tensors are not PixArt ControlNet weights: {listing(unknown)}")
    if base:
        log.info(
            "%s: %d base-model tensors in the file are not used (the base model comes from its own loader)",
            source,
            len(base),
        )
    return layouts.pop(), copies


def _official_keys(layout: str, copies: dict[int, dict[str, dict[str, Tensor]]], source: str) -> dict[str, Tensor]:
    """Official ``controlnet.{i}.*`` keys; diffusers block names mapped to official ones (fused q/k/v, k/v)."""
    out: dict[str, Tensor] = {}
    for i, parts in copies.items():
        for part, named in parts.items():
            if part == "transformer_block" and layout == "adapter":
                converted, unknown = diffusers_to_official({f"transformer_blocks.{i}.{k}": v for k, v in named.items()})
                if unknown:
                    raise CheckpointError(
                        f"{source}: controlnet_blocks.{i}.transformer_block holds tensors that are not PixArt block "
                        f"weights: {listing(unknown)}"
                    )
                prefix = f"blocks.{i}."
                out.update({f"controlnet.{i}.copied_block.{k[len(prefix) :]}": v for k, v in converted.items()})
            else:
                out.update({f"controlnet.{i}.{part}.{k}": v for k, v in named.items()})
    return out


def _width(state_dict: Mapping[str, Tensor], source: str) -> int:
    key = "controlnet.0.after_proj.weight"
    if key not in state_dict:
        raise CheckpointError(f"{source}: no {key!r}; a ControlNet's copy 0 needs after_proj (C, C)")
    shape = tuple(state_dict[key].shape)
    if len(shape) != 2 or shape[0] != shape[1] or not 1 <= shape[0] <= MAX_WIDTH:
        raise CheckpointError(f"{source}: {key!r} is {short(shape, 60)}, expected (C, C) with C 1..{MAX_WIDTH}")
    return shape[0]


def controlnet_config(state_dict: Mapping[str, Tensor], source: str, num_heads: int | None = None) -> ControlNetConfig:
    """The architecture of an official-keyed ControlNet state dict: copies, width, MLP ratio and trained KV layers
    from the shapes; heads ``num_heads`` or, when None, width / 72 (every released PixArt model)."""
    indices = sorted({int(k.split(".")[1]) for k in state_dict})
    if indices[-1] >= MAX_DEPTH:
        raise CheckpointError(f"{source}: names ControlNet copy {indices[-1]}, expected at most {MAX_DEPTH} copies")
    missing = [i for i in range(indices[-1] + 1) if i not in indices]
    if missing:
        raise CheckpointError(f"{source}: has ControlNet copies 0..{indices[-1]} but none of {listing(missing)}")
    width = _width(state_dict, source)
    if num_heads is None:
        if width % HEAD_DIM:
            raise CheckpointError(
                f"{source}: cannot tell the attention heads of a {width}-wide ControlNet (released models use heads "
                f"of {HEAD_DIM}); pass num_heads"
            )
        num_heads = width // HEAD_DIM
    fc1 = state_dict.get("controlnet.0.copied_block.mlp.fc1.weight")
    if fc1 is None or fc1.ndim != 2 or fc1.shape[1] != width or not 1 <= fc1.shape[0] <= MAX_WIDTH:
        found = "nothing" if fc1 is None else short(tuple(fc1.shape), 60)
        raise CheckpointError(
            f"{source}: 'controlnet.0.copied_block.mlp.fc1.weight' is {found}, expected (hidden, {width})"
        )
    conv = tuple(i for i in indices if f"controlnet.{i}.copied_block.attn.sr.weight" in state_dict)
    factor = 1
    if conv:
        shape = tuple(state_dict[f"controlnet.{conv[0]}.copied_block.attn.sr.weight"].shape)
        if len(shape) != 4 or not 2 <= shape[-1] <= 8:
            raise CheckpointError(
                f"{source}: 'controlnet.{conv[0]}.copied_block.attn.sr.weight' is {short(shape, 60)}, expected "
                f"({width}, 1, s, s) with s 2..8"
            )
        factor = shape[-1]
    try:
        return ControlNetConfig(len(indices), width, num_heads, fc1.shape[0] / width, conv, factor)
    except ValueError as e:
        raise CheckpointError(f"{source}: inconsistent ControlNet hyperparameters: {e}") from e


def check_against_controlnet(state_dict: Mapping[str, Tensor], config: ControlNetConfig, source: str) -> None:
    """CheckpointError listing missing, unexpected and wrongly shaped tensors for ``config`` (key, expected, found)."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in PixArtControlNet(config).state_dict().items()}
    problems = weight_problems(state_dict, expected)
    not_float = [k for k, v in state_dict.items() if not v.is_floating_point()]
    if not_float:
        problems.append(f"not floating point: {listing(not_float)}")
    if problems:
        shape = f"{config.copies} copies, width {config.hidden_size}, MLP ratio {config.mlp_ratio}"
        raise CheckpointError(f"{source}: does not match a PixArt ControlNet with {shape}: " + "; ".join(problems))


def _weights_file(path: Path) -> Path:
    """The weights file of a ControlNet file or diffusers folder (``save_pretrained`` of the adapter)."""
    if path.is_dir():
        for name in FOLDER_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: a folder without ControlNet weights; expected one of {list(FOLDER_WEIGHTS)}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ControlNet file or folder")
    return path


def read_controlnet(path: str | Path, num_heads: int | None = None) -> tuple[dict[str, Tensor], ControlNetConfig]:
    """A PixArt ControlNet file (official or diffusers adapter layout, ``.pth``/``.safetensors``/...).

    Args:
        path: the file, or a diffusers folder holding ``diffusion_pytorch_model.safetensors`` (or ``.bin``).
        num_heads: attention heads of the copies (= the base model's); None reads width / 72.
    Returns:
        (state dict with official ``controlnet.{i}.*`` keys, architecture).
    """
    path = _weights_file(Path(path))
    source = str(path)
    layout, copies = _split(read_weights(path, CheckpointError, WRAPPERS), source)
    state_dict = _official_keys(layout, copies, source)
    config = controlnet_config(state_dict, source, num_heads)
    check_against_controlnet(state_dict, config, source)
    return state_dict, config


def load_controlnet(
    path: str | Path,
    num_heads: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    operations=None,
    attention=None,
) -> PixArtControlNet:
    """:func:`read_controlnet` into a ready ``PixArtControlNet`` (eval mode, weights in ``dtype`` on ``device``)."""
    state_dict, config = read_controlnet(path, num_heads)
    with torch.device("meta"):
        model = PixArtControlNet(config, dtype=dtype, operations=operations, attention=attention, source=str(path))
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}, assign=True)
    return model.eval()
