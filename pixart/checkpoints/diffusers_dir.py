"""diffusers transformer folders: ``config.json`` + ``diffusion_pytorch_model*.safetensors`` (sharded or not)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from .errors import CheckpointError
from .official import read_pickled
from .safetensors_file import read_safetensors

TRANSFORMER_CLASSES = ("PixArtTransformer2DModel", "Transformer2DModel")
PIPELINE_FAMILIES = {"PixArtSigmaPipeline": "sigma", "PixArtAlphaPipeline": "alpha"}
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def transformer_folder(path: Path) -> Path:
    """The folder holding ``config.json``: ``path`` itself or its ``transformer/`` (a whole pipeline folder)."""
    if (path / "config.json").is_file():
        return path
    if (path / "transformer" / "config.json").is_file():
        return path / "transformer"
    raise CheckpointError(f"{path}: a diffusers transformer folder needs config.json (or transformer/config.json)")


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e


def folder_hints(folder: Path) -> dict:
    """PixArtConfig fields a diffusers ``config.json`` (and the pipeline's ``model_index.json``) state."""
    config = _load_json(folder / "config.json")
    if config.get("_class_name") not in TRANSFORMER_CLASSES:
        raise CheckpointError(
            f"{folder / 'config.json'}: _class_name is {config.get('_class_name')!r}, "
            f"expected one of {TRANSFORMER_CLASSES}"
        )
    hints = {}
    if "num_attention_heads" in config:
        hints["num_heads"] = config["num_attention_heads"]
    if "sample_size" in config:
        hints["sample_size"] = config["sample_size"]
        scale = config.get("interpolation_scale")
        hints["pe_interpolation"] = float(scale if scale is not None else max(config["sample_size"] // 64, 1))
    index = folder.parent / "model_index.json"
    if index.is_file():
        family = PIPELINE_FAMILIES.get(_load_json(index).get("_class_name"))
        if family:
            hints["family"] = family
    return hints


def read_diffusers_folder(folder: Path) -> dict[str, Tensor]:
    """All weight tensors of a diffusers model folder, joining shards listed in the ``*.index.json``."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return read_safetensors(folder / name) if name.endswith(".safetensors") else read_pickled(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(_load_json(index).get("weight_map", {}).values()))
            if not shards:
                raise CheckpointError(f"{index}: its weight_map lists no shard files")
            tensors: dict[str, Tensor] = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{index}: lists shard {shard!r}, which is not in {folder}")
                read = read_safetensors if shard.endswith(".safetensors") else read_pickled
                tensors.update(read(folder / shard))
            return tensors
    raise CheckpointError(f"{folder}: no diffusion_pytorch_model.safetensors (or .bin, or a sharded index) found")
