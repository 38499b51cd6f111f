"""PixArt Sigma T5 Loader: T5-XXL from models/text_encoders for PixArt Sigma Text Encode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..pixart.errors import T5Error
from .common import TOKENIZER_MARKERS, find_model, model_choices, model_folders, pick, torch_dtype
from .node_api import CATEGORY, T5Encoder, io, schema

T5_KINDS = ("text_encoders",)
BUNDLED_TOKENIZER = "comfyui bundled"
# name -> (compute dtype, Linear weight storage dtype or None)
T5_DTYPES = {
    "bf16": ("bfloat16", None),
    "fp32": ("float32", None),
    "fp16": ("float16", None),
    "fp8_e4m3fn": ("bfloat16", "float8_e4m3fn"),
    "fp8_e5m2": ("bfloat16", "float8_e5m2"),
}
T5_DEVICES = ("default", "gpu", "cpu")


def bundled_tokenizer_dirs() -> list[Path]:
    """ComfyUI's own T5 tokenizer folder (``comfy/text_encoders/t5_tokenizer``), found through the import system
    (``comfy`` is a namespace package, so it has no single ``__file__``); empty when this ComfyUI has none."""
    spec = importlib.util.find_spec("comfy")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    folders = (Path(root) / "text_encoders" / "t5_tokenizer" for root in roots)
    return [folder for folder in folders if folder.is_dir()]


def bundled_tokenizer_dir() -> Path:
    """The first of :func:`bundled_tokenizer_dirs`; FileNotFoundError when there is none."""
    found = bundled_tokenizer_dirs()
    if not found:
        raise FileNotFoundError(
            "PixArt Sigma T5 Loader: this ComfyUI has no bundled T5 tokenizer "
            "(comfy/text_encoders/t5_tokenizer); pick a tokenizer folder instead"
        )
    return found[0]


class PixArtSigmaT5Loader(io.ComfyNode):
    """Loads the T5-XXL text encoder for PixArt-Sigma/alpha prompts."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        tokenizers = model_folders(folder_paths.get_folder_paths("text_encoders"), TOKENIZER_MARKERS)
        return schema(
            node_id="PixArtSigmaT5Loader",
            display_name="PixArt Sigma T5 Loader",
            category=CATEGORY,
            search_aliases=["pixart text encoder", "t5xxl"],
            description=(
                "PixArt Sigma T5 Loader: loads T5 v1.1 XXL for PixArt Sigma from models/text_encoders, one "
                ".safetensors file (e.g. t5xxl_fp16.safetensors, or an fp8 file) or a folder with config.json (a "
                "PixArt diffusers repo's text_encoder/). Nothing is downloaded."
            ),
            inputs=[
                io.Combo.Input(
                    "t5_name",
                    options=model_choices(T5_KINDS),
                    tooltip="T5-XXL file, or folder (name/), in models/text_encoders.",
                ),
                io.Combo.Input(
                    "tokenizer",
                    options=["auto", BUNDLED_TOKENIZER, *tokenizers],
                    default="auto",
                    tooltip="auto: the tokenizer in the T5's folder, else ComfyUI's bundled T5 tokenizer; comfyui "
                    "bundled: always ComfyUI's; or a folder in models/text_encoders holding tokenizer.json or "
                    "spiece.model.",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(T5_DTYPES),
                    default="bf16",
                    tooltip="Compute precision: bf16 (default, ~9.5 GB for T5-XXL), fp32 (twice that), fp16; fp8_* "
                    "keep the linear weights in 8 bits (~5 GB) and compute in bf16.",
                ),
                io.Combo.Input(
                    "device",
                    options=list(T5_DEVICES),
                    default="default",
                    tooltip="Where the T5 runs: default = ComfyUI's text-encoder device; cpu saves VRAM but is slower.",
                ),
                io.Boolean.Input(
                    "offload_after_encode",
                    default=True,
                    tooltip="Kept for saved workflows, no longer used: ComfyUI's memory manager holds the T5 and moves "
                    "it to RAM when the DiT needs the VRAM (and on 'unload models').",
                ),
            ],
            outputs=[T5Encoder.Output(tooltip="The T5 text encoder with its tokenizer, for PixArt Sigma Text Encode.")],
        )

    @classmethod
    def execute(cls, t5_name, tokenizer, dtype, device, offload_after_encode) -> io.NodeOutput:
        import comfy.model_management as mm

        from ..pixart.text_encoder import load_t5
        from .t5_model import ManagedT5

        compute, storage = (torch_dtype(name) for name in pick(T5_DTYPES, dtype, "PixArt Sigma T5 Loader dtype"))
        devices = {"default": mm.text_encoder_device, "gpu": mm.get_torch_device, "cpu": lambda: torch.device("cpu")}
        run_device = torch.device(pick(devices, device, "PixArt Sigma T5 Loader device")())
        offload = torch.device(mm.text_encoder_offload_device())
        if tokenizer == "auto":
            explicit = None
        elif tokenizer == BUNDLED_TOKENIZER:
            explicit = bundled_tokenizer_dir()
        else:
            explicit = find_model(T5_KINDS, tokenizer, T5Error)
        encoder = load_t5(
            find_model(T5_KINDS, t5_name, T5Error),
            tokenizer=explicit,
            dtype=compute,
            device=offload,
            fallback_tokenizer_dirs=bundled_tokenizer_dirs(),
            weight_dtype=storage,
        )
        return io.NodeOutput(ManagedT5(encoder, run_device, offload))
