"""PixArt Sigma DiT Loader: a PixArt-Σ/α transformer as a ComfyUI MODEL, with optional KV compression."""

from __future__ import annotations

import pixart

from .common import CATEGORY, find_model, model_choices, pick, spec, torch_dtype

DIT_KINDS = ("diffusion_models", "checkpoints")
DIT_DTYPES = {"default": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DIT_DTYPES |= {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
KV_MODES = ("off", "avgpool", "uniform", "ave", "conv")


class PixArtSigmaDiTLoader:
    """Loads a PixArt-Σ/α transformer as a ComfyUI MODEL, with optional KV token compression."""

    TITLE = "PixArt Sigma DiT Loader"
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The PixArt Sigma diffusion model, for PixArt Sigma Sampler, KSampler or any MODEL input.",)
    DESCRIPTION = (
        "PixArt Sigma DiT Loader: loads a PixArt-Sigma or PixArt-alpha transformer from models/diffusion_models or "
        "models/checkpoints (official .pth, .safetensors with official, diffusers or ComfyUI keys, or a diffusers "
        "folder). KV compression shrinks the keys and values of self-attention for large images (2K, 4K)."
    )

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "ckpt_name": spec(
                    model_choices(DIT_KINDS),
                    "PixArt transformer file, or diffusers folder (name/), in models/diffusion_models or checkpoints.",
                ),
                "variant": spec(
                    ["auto", *pixart.VARIANTS],
                    "auto reads the architecture from the file; pick a preset (e.g. sigma-2k) when the file does not "
                    "record its base resolution.",
                    default="auto",
                ),
                "weight_dtype": spec(
                    list(DIT_DTYPES),
                    "Weight precision; default lets ComfyUI choose for the device. fp8_* halve fp16's memory and "
                    "compute in a higher precision.",
                    default="default",
                ),
                "kv_compress": spec(
                    list(KV_MODES),
                    "KV token compression in self-attention: off; avgpool (mean of each factor x factor window, "
                    "training-free); uniform (every factor-th token); ave (nearest resize); conv (needs a checkpoint "
                    "with trained KV-compression weights).",
                    default="off",
                ),
                "kv_factor": spec(
                    "INT",
                    "Compression factor per side, 2 to 8: keys and values shrink by factor^2 in the chosen blocks. "
                    "Ignored when kv_compress is off.",
                    default=2,
                    min=2,
                    max=8,
                    step=1,
                ),
                "kv_layers": spec(
                    "STRING",
                    "Blocks to compress: auto = second half (14-27 of 28, the official setting), or a list like "
                    "'14-27', '0,2,4-6', 'all'. Ignored when kv_compress is off.",
                    default="auto",
                ),
            }
        }

    def load(self, ckpt_name, variant, weight_dtype, kv_compress, kv_factor, kv_layers):
        from .comfy_model import load_model

        kv = None
        if kv_compress != "off":
            kv = (kv_compress, kv_factor, None if kv_layers.strip().lower() in ("", "auto") else kv_layers)
        dtype = torch_dtype(pick(DIT_DTYPES, weight_dtype, "PixArt Sigma DiT Loader weight_dtype"))
        return (load_model(find_model(DIT_KINDS, ckpt_name), variant, dtype, kv),)
