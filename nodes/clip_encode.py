"""PixArt Sigma CLIP Text Encode: reference-exact PixArt conditioning from a stock ComfyUI CLIP holding T5-XXL.

Users who keep ``t5xxl_fp16`` / ``t5xxl_fp8_e4m3fn(_scaled)`` loaded through CLIPLoader (type sd3 or pixart) or
DualCLIPLoader (flux) need no second T5: the prompt is prepared as the reference pipeline does (lowercased and
stripped by ``pixart.t5.encoder.preprocess_prompt``, cut to ``max_length * CHARS_PER_TOKEN`` characters), tokenized
by the CLIP's own T5 tokenizer with ``</s>``, truncated to 300 (Sigma) / 120 (alpha) tokens, padded with ``<pad>``,
and run through the CLIP's T5 stack with the attention mask, so the CONDITIONING equals PixArt Sigma Text Encode's on
the same weights. ComfyUI's CLIPTextEncode runs the T5 without a mask (and, for sd3, on 77 padded tokens), which
PixArt was not trained with.
"""

from __future__ import annotations

import contextlib
import logging

import comfy.model_management as mm
import torch

from ..pixart.t5.encoder import CHARS_PER_TOKEN, preprocess_prompt
from .common import pick
from .node_api import CATEGORY, io, schema
from .t5 import MAX_TOKENS, conditioning, conditioning_output, model_family_input

logger = logging.getLogger(__name__)

T5_NAME = "t5xxl"  # ComfyUI's name for T5-XXL: the CLIP model attribute and its tokenizer's embedding_key


def clip_t5(clip):
    """The CLIP's T5-XXL tokenizer (a ComfyUI ``SDTokenizer``) and encoder (an ``SDClipModel`` whose ``transformer``
    is ComfyUI's T5); ValueError naming what the CLIP holds when it has no T5-XXL."""
    model = getattr(clip.cond_stage_model, T5_NAME, None)
    tokenizers = [t for t in vars(clip.tokenizer).values() if getattr(t, "embedding_key", None) == T5_NAME]
    if model is None or not hasattr(model, "transformer") or not tokenizers:
        parts = sorted(name for name, module in clip.cond_stage_model.named_children() if module is not None)
        raise ValueError(
            "PixArt Sigma CLIP Text Encode: expected a CLIP holding T5-XXL (CLIPLoader type sd3 or pixart with "
            f"t5xxl_fp16 / t5xxl_fp8_e4m3fn(_scaled), or DualCLIPLoader type flux); this CLIP "
            f"({type(clip.cond_stage_model).__name__}) holds {parts or 'no text encoder parts'}"
        )
    return tokenizers[0], model


def reference_tokens(tokenizer, text: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask, both (1, max_length) int64, as the reference pipeline's T5 tokenizer call makes them.

    ``tokenizer`` is a ComfyUI ``SDTokenizer`` of T5 (its ``tokenizer`` returns ids ending in ``</s>``, its
    ``end_token``/``pad_token`` are T5's 1 and 0). Over ``max_length`` the first ``max_length - 1`` tokens and
    ``</s>`` are kept, with a warning; then ``<pad>`` fills up to ``max_length`` (mask 0 there)."""
    limit = max_length * CHARS_PER_TOKEN
    prompt = preprocess_prompt(text)
    ids = list(tokenizer.tokenizer(prompt[:limit])["input_ids"])
    cut = len(prompt) > limit
    if cut or len(ids) > max_length:
        logger.warning(
            "PixArt Sigma CLIP Text Encode: the prompt is %d tokens with </s>%s; max_length=%d keeps the first %d "
            "and </s>",
            len(ids),
            f" after cutting it to its first {limit} characters" if cut else "",
            max_length,
            max_length - 1,
        )
    if len(ids) > max_length:
        ids = [*ids[: max_length - 1], tokenizer.end_token]
    real = len(ids)
    ids = ids + [tokenizer.pad_token] * (max_length - real)
    mask = [1] * real + [0] * (max_length - real)
    return torch.tensor([ids], dtype=torch.long), torch.tensor([mask], dtype=torch.long)


def encode_with_mask(clip, text: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the CLIP through ComfyUI's memory manager and run its T5 stack on the reference tokens with the
    attention mask (masked keys get no attention, as in transformers' T5EncoderModel): (1, L, C) float32 states
    and the (1, L) int64 mask, on the CLIP's load device."""
    tokenizer, model = clip_t5(clip)
    ids, mask = reference_tokens(tokenizer, text, max_length)
    mm.load_models_gpu([clip.patcher])
    device = clip.patcher.load_device
    on_device = getattr(mm, "cuda_device_context", None)  # 0.33 selects the CLIP's GPU with it; 0.3.64 has none
    with torch.no_grad(), on_device(device) if on_device is not None else contextlib.nullcontext():
        states, _ = model.transformer(ids.to(device), mask.to(device), dtype=torch.float32)
    return states.float(), mask.to(device)


class PixArtSigmaCLIPTextEncode(io.ComfyNode):
    """PixArt conditioning from a stock CLIP that holds T5-XXL, equal to PixArt Sigma Text Encode's."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaCLIPTextEncode",
            display_name="PixArt Sigma CLIP Text Encode",
            category=CATEGORY,
            search_aliases=["pixart clip encode", "t5xxl clip pixart"],
            description=(
                "PixArt Sigma CLIP Text Encode: encodes a prompt for PixArt with the T5-XXL of a stock CLIP "
                "(CLIPLoader type sd3 or pixart, DualCLIPLoader flux; fp16, fp8 and fp8 scaled files) the way the "
                f"reference pipeline does: lowercased, at most {MAX_TOKENS['sigma']} tokens (Sigma) or "
                f"{MAX_TOKENS['alpha']} (alpha), padded and encoded with the attention mask. The result equals PixArt "
                "Sigma Text Encode's on the same weights; plain CLIPTextEncode encodes without the mask."
            ),
            inputs=[
                io.Clip.Input(
                    "clip",
                    tooltip="A CLIP holding T5-XXL: CLIPLoader (type sd3 or pixart) with t5xxl_fp16 or an fp8 T5, "
                    "or DualCLIPLoader (type flux).",
                ),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    default="",
                    tooltip="The prompt; leave empty for the usual negative prompt. No (word:1.2) weights: the text "
                    "is encoded as written, lowercased.",
                ),
                model_family_input(),
            ],
            outputs=[conditioning_output()],
        )

    @classmethod
    def execute(cls, clip, text, model_family) -> io.NodeOutput:
        max_length = pick(MAX_TOKENS, model_family, "PixArt Sigma CLIP Text Encode model_family")
        states, mask = encode_with_mask(clip, text, max_length)  # (1, L, C), (1, L)
        return io.NodeOutput(conditioning(states, mask, mm.intermediate_device()))
