"""PixArt Sigma T5 Loader: T5-XXL from models/text_encoders for PixArt Sigma Text Encode."""

from __future__ import annotations

import os

import torch

from .common import (
    CATEGORY,
    T5_TYPE,
    TOKENIZER_MARKERS,
    find_model,
    model_choices,
    model_folders,
    pick,
    spec,
    torch_dtype,
)

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


def bundled_tokenizer_dir() -> str:
    """ComfyUI's own T5 tokenizer folder (comfy/text_encoders/t5_tokenizer)."""
    import comfy.model_management  # comfy/ is a namespace package: locate it through one of its modules

    return os.path.join(os.path.dirname(comfy.model_management.__file__), "text_encoders", "t5_tokenizer")


class PixArtSigmaT5Loader:
    """Loads the T5-XXL text encoder for PixArt-Σ/α prompts."""

    TITLE = "PixArt Sigma T5 Loader"
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (T5_TYPE,)
    OUTPUT_TOOLTIPS = ("The T5 text encoder with its tokenizer, for PixArt Sigma Text Encode.",)
    DESCRIPTION = (
        "PixArt Sigma T5 Loader: loads T5 v1.1 XXL for PixArt Sigma from models/text_encoders, one .safetensors "
        "file (e.g. t5xxl_fp16.safetensors, or an fp8 file) or a folder with config.json (a PixArt diffusers repo's "
        "text_encoder/). Nothing is downloaded."
    )

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        import folder_paths

        tokenizers = model_folders(folder_paths.get_folder_paths("text_encoders"), TOKENIZER_MARKERS)
        return {
            "required": {
                "t5_name": spec(model_choices(T5_KINDS), "T5-XXL file, or folder (name/), in models/text_encoders."),
                "tokenizer": spec(
                    ["auto", BUNDLED_TOKENIZER, *tokenizers],
                    "auto: the tokenizer in the T5's folder, else ComfyUI's bundled T5 tokenizer; comfyui bundled: "
                    "always ComfyUI's; or a folder in models/text_encoders holding tokenizer.json or spiece.model.",
                    default="auto",
                ),
                "dtype": spec(
                    list(T5_DTYPES),
                    "Compute precision: bf16 (default, ~9.5 GB for T5-XXL), fp32 (twice that), fp16; fp8_* keep the "
                    "linear weights in 8 bits (~5 GB) and compute in bf16.",
                    default="bf16",
                ),
                "device": spec(
                    ["default", "gpu", "cpu"],
                    "Where the T5 runs: default = ComfyUI's text-encoder device; cpu saves VRAM but is slower.",
                    default="default",
                ),
                "offload_after_encode": spec(
                    "BOOLEAN",
                    "Move the T5 weights back to RAM after each encode, freeing VRAM for the DiT.",
                    default=True,
                ),
            }
        }

    def load(self, t5_name, tokenizer, dtype, device, offload_after_encode):
        import comfy.model_management as mm

        from pixart.text_encoder import load_t5

        compute, storage = (torch_dtype(name) for name in pick(T5_DTYPES, dtype, "PixArt Sigma T5 Loader dtype"))
        devices = {"default": mm.text_encoder_device, "gpu": mm.get_torch_device, "cpu": lambda: torch.device("cpu")}
        run_device = torch.device(pick(devices, device, "PixArt Sigma T5 Loader device")())
        offload = torch.device(mm.text_encoder_offload_device()) if offload_after_encode else None
        explicit = {"auto": None, BUNDLED_TOKENIZER: bundled_tokenizer_dir()}.get(tokenizer)
        if tokenizer not in ("auto", BUNDLED_TOKENIZER):
            explicit = find_model(T5_KINDS, tokenizer)
        encoder = load_t5(
            find_model(T5_KINDS, t5_name),
            tokenizer=explicit,
            dtype=compute,
            device=run_device,
            fallback_tokenizer_dirs=(bundled_tokenizer_dir(),),
            offload_device=None if offload == run_device else offload,
            weight_dtype=storage,
        )
        return (encoder,)
