"""PixArt Sigma Text Encode: prompt -> CONDITIONING with the T5 attention mask."""

from __future__ import annotations

import torch

from .common import CATEGORY, T5_TYPE, pick, spec

MAX_TOKENS = {"sigma": 300, "alpha": 120}


class PixArtSigmaTextEncode:
    """Encodes a prompt with T5 the way the PixArt reference pipeline does."""

    TITLE = "PixArt Sigma Text Encode"
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = (
        "T5 states of the prompt's real tokens (padding dropped) with their attention_mask; works with PixArt "
        "Sigma Sampler, KSampler and ComfyUI's built-in PixArt model.",
    )
    DESCRIPTION = (
        "PixArt Sigma Text Encode: lowercases the prompt, tokenizes it to at most 300 T5 tokens (PixArt-Sigma) or "
        "120 (PixArt-alpha) and encodes it with the attention mask, as the reference pipeline does. An empty "
        "prompt is the reference negative prompt."
    )

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        return {
            "required": {
                "t5": spec(T5_TYPE, "T5 encoder from PixArt Sigma T5 Loader."),
                "text": spec(
                    "STRING",
                    "The prompt; leave empty for the usual negative prompt.",
                    multiline=True,
                    dynamicPrompts=True,
                    default="",
                ),
                "model_family": spec(
                    list(MAX_TOKENS),
                    "sigma: up to 300 T5 tokens (PixArt-Sigma); alpha: up to 120 (PixArt-alpha). Longer prompts "
                    "are cut, with a warning in the log.",
                    default="sigma",
                ),
            }
        }

    def encode(self, t5, text, model_family):
        import comfy.model_management as mm

        max_length = pick(MAX_TOKENS, model_family, "PixArt Sigma Text Encode model_family")
        if t5.device.type != "cpu":  # make room: ComfyUI does not track the T5's weights
            mm.free_memory(mm.module_size(t5.model) * 1.2, t5.device)
        states, mask = t5.encode([text], max_length=max_length)  # (1, L, C), (1, L)
        keep = mask[0] > 0
        states = states[:, keep.to(states.device)].to(mm.intermediate_device(), torch.float32)  # (1, L_real, C)
        attention_mask = torch.ones(states.shape[:2], dtype=torch.float32, device=states.device)
        return ([[states, {"attention_mask": attention_mask, "pooled_output": None}]],)
