"""PixArt Sigma Save Trained: writes what PixArt Sigma Train trained where ComfyUI loads it, never over a file.

LoRA -> ComfyUI's ``loras`` folder: ``<name>.safetensors`` (our PixArt Sigma LoRA Loader, stock
LoraLoaderModelOnly) and / or the PEFT adapter folder ``<name>_peft/`` (our loader, diffusers through PEFT).
Full fine-tune -> ComfyUI's ``diffusion_models`` folder: ``<name>.safetensors`` with official keys and / or the
diffusers transformer folder ``<name>_transformer/`` (PixArt Sigma DiT Loader, diffusers).
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePath

import folder_paths
import torch

from ...pixart.training import TrainingError, save_full_diffusers, save_full_official, save_lora_file, save_peft_folder
from ..node_api import CATEGORY, io, schema
from .train import Trained

log = logging.getLogger(__name__)
WHO = "PixArt Sigma Save Trained"
LORA_FORMATS = ("safetensors", "peft_folder", "both")
FULL_FORMATS = ("official_safetensors", "diffusers_folder", "both")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_name(name: str) -> str:
    """The file name stem; TrainingError unless it is a plain relative name (sub-folders allowed, no ``..``)."""
    name = name.strip()
    parts = PurePath(name).parts
    if not name or PurePath(name).is_absolute() or ".." in parts or "\\" in name:
        raise TrainingError(f"{WHO} name: expected a relative file name without '..', got {name!r}")
    return name


def save_trained(result, name: str, lora_format: str, full_format: str, dtype: str) -> list[Path]:
    """Write ``result`` (a TrainedResult) under ComfyUI's first ``loras`` / ``diffusion_models`` folder; the paths
    written. OutputExistsError naming the path when one exists (nothing of that format is written then)."""
    name, cast = check_name(name), DTYPES[dtype]
    both = ("both",)
    if result.lora is not None:
        base = Path(folder_paths.get_folder_paths("loras")[0])
        written = []
        if lora_format in ("safetensors", *both):
            written.append(save_lora_file(result.lora, base / f"{name}.safetensors", cast))
        if lora_format in ("peft_folder", *both):
            written.append(save_peft_folder(result.lora, base / f"{name}_peft", cast))
        return written
    base = Path(folder_paths.get_folder_paths("diffusion_models")[0])
    written = []
    if full_format in ("official_safetensors", *both):
        written.append(save_full_official(result.model, base / f"{name}.safetensors", cast))
    if full_format in ("diffusers_folder", *both):
        written.append(save_full_diffusers(result.model, base / f"{name}_transformer", cast))
    return written


class PixArtSigmaSaveTrained(io.ComfyNode):
    """Saves a PixArt Sigma Train result as LoRA file / PEFT folder or full official file / diffusers folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaSaveTrained",
            display_name="PixArt Sigma Save Trained",
            category=f"{CATEGORY}/training",
            search_aliases=["pixart save lora", "save trained pixart"],
            description=(
                "PixArt Sigma Save Trained: a LoRA goes to models/loras as <name>.safetensors (PixArt Sigma LoRA "
                "Loader, LoraLoaderModelOnly) and / or the PEFT folder <name>_peft/ (diffusers via PEFT); a full "
                "fine-tune to models/diffusion_models as <name>.safetensors with official keys and / or the "
                "diffusers folder <name>_transformer/ (PixArt Sigma DiT Loader, diffusers). Never overwrites."
            ),
            inputs=[
                Trained.Input("trained", tooltip="From PixArt Sigma Train."),
                io.String.Input(
                    "name",
                    default="pixart_sigma_lora",
                    tooltip="File name without extension, relative to models/loras (LoRA) or models/diffusion_models "
                    "(full); an existing file is never overwritten.",
                ),
                io.Combo.Input(
                    "lora_format",
                    options=list(LORA_FORMATS),
                    default="safetensors",
                    tooltip="For a LoRA run: one safetensors file, a PEFT adapter folder (<name>_peft/), or both.",
                ),
                io.Combo.Input(
                    "full_format",
                    options=list(FULL_FORMATS),
                    default="official_safetensors",
                    tooltip="For a full fine-tune: one file with official keys, a diffusers transformer folder "
                    "(<name>_transformer/), or both.",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default="fp32",
                    tooltip="Precision of the saved weights (LoRA alphas stay fp32).",
                ),
            ],
            outputs=[io.String.Output(tooltip="The paths written, one a line.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, trained, name, lora_format, full_format, dtype) -> io.NodeOutput:
        for setting, value, allowed in (
            ("lora_format", lora_format, LORA_FORMATS),
            ("full_format", full_format, FULL_FORMATS),
            ("dtype", dtype, tuple(DTYPES)),
        ):
            if value not in allowed:
                raise TrainingError(f"{WHO} {setting}: expected one of {list(allowed)}, got {value!r}")
        written = save_trained(trained, name, lora_format, full_format, dtype)
        log.info("%s: wrote %s", WHO, ", ".join(map(str, written)))
        return io.NodeOutput("\n".join(map(str, written)))
