"""The T5 family: PixArt Sigma T5 Loader (T5-XXL from models/text_encoders) and PixArt Sigma Text Encode (prompt ->
CONDITIONING with the T5 attention mask), with the loaded T5 inside ComfyUI's memory manager.

The T5's weights live in a ``comfy.model_patcher.ModelPatcher`` and are loaded with ``load_models_gpu`` before each
encode, so ComfyUI counts them, moves them off the GPU when the DiT needs the room (and back), and unloads them on
"unload models" (``/free``). The T5 is a transformers module without ComfyUI's casting layers, so ComfyUI loads it
whole or not at all (no partial low-VRAM loading).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from torch import nn

from ..pixart.config import CAPTION_TOKENS
from ..pixart.errors import T5Error
from ..pixart.text_encoder import T5PromptEncoder, load_t5
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


class T5Weights(nn.Module):
    """The module the patcher manages, holding the transformers T5 as ``t5``: ComfyUI writes its bookkeeping
    (``device``, loaded-weight counters) onto that module, and a transformers model's ``device`` is read-only."""

    def __init__(self, t5: nn.Module):
        super().__init__()
        self.t5 = t5


class ManagedT5:
    """The PIXART_T5 value: a ``T5PromptEncoder`` whose weights ComfyUI places through ``patcher``."""

    def __init__(self, encoder: T5PromptEncoder, load_device: torch.device, offload_device: torch.device):
        encoder.offload_device = None  # ComfyUI decides when the weights leave the GPU
        encoder.device = torch.device(load_device)
        self.encoder = encoder
        self.patcher = comfy.model_patcher.ModelPatcher(
            T5Weights(encoder.model), load_device=load_device, offload_device=offload_device
        )

    @property
    def hidden_size(self) -> int:
        """C, the T5 width."""
        return self.encoder.hidden_size

    @property
    def device(self) -> torch.device:
        """Where the T5 runs when loaded."""
        return self.patcher.load_device

    def encode(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Load the weights through ComfyUI, then ``T5PromptEncoder.encode``: (B, L, C) float32 states on the T5's
        device and the (B, L) int64 mask (1 real token, 0 padding)."""
        mm.load_models_gpu([self.patcher])
        return self.encoder.encode(prompts, max_length=max_length)

    def __repr__(self) -> str:
        return f"ManagedT5({self.encoder!r})"


class PixArtSigmaT5Loader(io.ComfyNode):
    """Loads the T5-XXL text encoder for PixArt-Sigma/alpha prompts."""

    @classmethod
    def define_schema(cls) -> io.Schema:
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


MAX_TOKENS = CAPTION_TOKENS  # T5 tokens kept per family (300 Sigma, 120 alpha), as each family was trained


def model_family_input() -> io.Combo.Input:
    """The ``model_family`` input of the text-encode nodes: how many T5 tokens to keep."""
    return io.Combo.Input(
        "model_family",
        options=list(MAX_TOKENS),
        default="sigma",
        tooltip=f"sigma: up to {MAX_TOKENS['sigma']} T5 tokens (PixArt-Sigma); alpha: up to "
        f"{MAX_TOKENS['alpha']} (PixArt-alpha). Longer prompts are cut, with a warning in the log.",
    )


def conditioning_output() -> io.Conditioning.Output:
    """The CONDITIONING output of the text-encode nodes."""
    return io.Conditioning.Output(
        tooltip="T5 states of the prompt's real tokens (padding dropped) with their attention_mask; works with "
        "PixArt Sigma Sampler, KSampler and ComfyUI's built-in PixArt model."
    )


def conditioning(states: torch.Tensor, mask: torch.Tensor, device: torch.device) -> list:
    """CONDITIONING of one prompt: the (1, L, C) T5 states of the tokens the (1, L) mask keeps, as float32 on
    ``device``, with an all-ones ``attention_mask`` over them."""
    kept = states[:, (mask[0] > 0).to(states.device)].to(device, torch.float32)  # (1, L_real, C)
    attention_mask = torch.ones(kept.shape[:2], dtype=torch.float32, device=kept.device)
    return [[kept, {"attention_mask": attention_mask, "pooled_output": None}]]


class PixArtSigmaTextEncode(io.ComfyNode):
    """Encodes a prompt with T5 the way the PixArt reference pipeline does."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaTextEncode",
            display_name="PixArt Sigma Text Encode",
            category=CATEGORY,
            search_aliases=["pixart prompt", "t5 encode"],
            description=(
                f"PixArt Sigma Text Encode: lowercases the prompt, tokenizes it to at most {MAX_TOKENS['sigma']} T5 "
                f"tokens (PixArt-Sigma) or {MAX_TOKENS['alpha']} (PixArt-alpha) and encodes it with the attention "
                "mask, as the reference pipeline does. An empty prompt is the reference negative prompt."
            ),
            inputs=[
                T5Encoder.Input("t5", tooltip="T5 encoder from PixArt Sigma T5 Loader."),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    default="",
                    tooltip="The prompt; leave empty for the usual negative prompt.",
                ),
                model_family_input(),
            ],
            outputs=[conditioning_output()],
        )

    @classmethod
    def execute(cls, t5, text, model_family) -> io.NodeOutput:
        max_length = pick(MAX_TOKENS, model_family, "PixArt Sigma Text Encode model_family")
        states, mask = t5.encode([text], max_length=max_length)  # (1, L, C), (1, L); ComfyUI loads the T5 first
        return io.NodeOutput(conditioning(states, mask, mm.intermediate_device()))
