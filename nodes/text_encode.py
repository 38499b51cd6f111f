"""PixArt Sigma Text Encode: prompt -> CONDITIONING with the T5 attention mask."""

from __future__ import annotations

import torch

from ..pixart.config import CAPTION_TOKENS
from .common import pick
from .node_api import CATEGORY, T5Encoder, io, schema

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
        import comfy.model_management as mm

        max_length = pick(MAX_TOKENS, model_family, "PixArt Sigma Text Encode model_family")
        states, mask = t5.encode([text], max_length=max_length)  # (1, L, C), (1, L); ComfyUI loads the T5 first
        return io.NodeOutput(conditioning(states, mask, mm.intermediate_device()))
