"""diffusers transformer folders: ``config.json`` + ``diffusion_pytorch_model*.safetensors`` (sharded or not)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..errors import CheckpointError, short
from ..io import entry_kind, json_field, read_json, read_shard_index, read_weights

TRANSFORMER_CLASSES = ("PixArtTransformer2DModel", "Transformer2DModel")
PIPELINE_FAMILIES = {"PixArtSigmaPipeline": "sigma", "PixArtAlphaPipeline": "alpha"}
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
MAX_HEADS = 1024  # attention heads a config may state
MAX_SAMPLE_SIZE = 1024  # latent side of the base resolution a config may state (8192 px)
# Fields a config may leave out (PixArtTransformer2DModel's defaults apply) but never state as null.
REQUIRED_IF_PRESENT = ("num_attention_heads", "sample_size")


def transformer_folder(path: Path) -> Path:
    """The folder holding ``config.json``: ``path`` itself or its ``transformer/`` (a whole pipeline folder)."""
    if entry_kind(path / "config.json") != "missing":  # read_json names a config.json that is not a regular file
        return path
    if entry_kind(path / "transformer" / "config.json") != "missing":
        return path / "transformer"
    raise CheckpointError(f"{path}: a diffusers transformer folder needs config.json (or transformer/config.json)")


def folder_hints(folder: Path) -> dict:
    """PixArtConfig fields a diffusers ``config.json`` (and the pipeline's ``model_index.json``) state."""
    path = folder / "config.json"
    config = read_json(path, CheckpointError)
    name = config.get("_class_name")
    if name not in TRANSFORMER_CLASSES:
        raise CheckpointError(f"{path}: _class_name is {short(repr(name), 60)}, expected one of {TRANSFORMER_CLASSES}")
    source = str(path)
    hints = {}
    for key in REQUIRED_IF_PRESENT:  # diffusers cannot build a model from a null one either (None // 64)
        if key in config and config[key] is None:
            raise CheckpointError(f"{source}: {key!r} is null; expected an int (or the key left out for the default)")
    heads = json_field(config, "num_attention_heads", int, source, CheckpointError, None, (1, MAX_HEADS))
    if heads is not None:
        hints["num_heads"] = heads
    sample_size = json_field(config, "sample_size", int, source, CheckpointError, None, (1, MAX_SAMPLE_SIZE))
    if sample_size is not None:
        hints["sample_size"] = sample_size
        default_scale = float(max(sample_size // 64, 1))
        hints["pe_interpolation"] = json_field(
            config, "interpolation_scale", float, source, CheckpointError, default_scale, (1e-3, 1e3)
        )
    index = folder.parent / "model_index.json"
    if index.is_file():
        family = PIPELINE_FAMILIES.get(
            json_field(read_json(index, CheckpointError), "_class_name", str, str(index), CheckpointError, "")
        )
        if family:
            hints["family"] = family
    return hints


def read_diffusers_folder(folder: Path) -> dict[str, Tensor]:
    """All weight tensors of a diffusers model folder, joining shards listed in the ``*.index.json``."""
    for name in WEIGHT_NAMES:
        if entry_kind(folder / name) != "missing":
            return read_weights(folder / name, CheckpointError)
        index = folder / f"{name}.index.json"
        if entry_kind(index) != "missing":
            tensors: dict[str, Tensor] = {}
            for shard in read_shard_index(index, CheckpointError):
                tensors.update(read_weights(shard, CheckpointError))
            return tensors
    raise CheckpointError(f"{folder}: no diffusion_pytorch_model.safetensors (or .bin, or a sharded index) found")
