"""T5 text encoder for PixArt-Sigma/alpha captions, without ComfyUI: :func:`load_t5` -> :class:`T5PromptEncoder`.

Loads offline from a Hugging Face / diffusers folder or one ComfyUI-style ``.safetensors`` file; never downloads.
The parts live in :mod:`pixart.t5` (checkpoint reading, float8 storage, tokenizer lookup, prompt encoding).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from .errors import T5Error
from .t5.encoder import ALPHA_MAX_LENGTH, SIGMA_MAX_LENGTH, T5PromptEncoder, preprocess_prompt
from .t5.loading import load_t5_model, resolve_source
from .t5.tokenizer import check_tokenizer, find_tokenizer, load_tokenizer

__all__ = [
    "ALPHA_MAX_LENGTH",
    "SIGMA_MAX_LENGTH",
    "T5Error",
    "T5PromptEncoder",
    "check_caption_width",
    "load_t5",
    "preprocess_prompt",
]

logger = logging.getLogger(__name__)


def load_t5(
    path: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    fallback_tokenizer_dirs: Sequence[str | os.PathLike[str]] = (),
    offload_device: torch.device | str | None = None,
    weight_dtype: torch.dtype | None = None,
) -> T5PromptEncoder:
    """Load a T5 encoder and its tokenizer from local files.

    Args:
        path: a ``.safetensors`` file (config inferred from shapes; ComfyUI's ``t5xxl_fp16`` / ``fp8_e4m3fn`` /
            ``fp8_e4m3fn_scaled`` files), a text-encoder folder (``config.json`` + ``model.safetensors`` or shards),
            or a diffusers pipeline folder holding ``text_encoder/`` and ``tokenizer/``.
        tokenizer: tokenizer folder or file (``tokenizer.json``, ``spiece.model``); when None it is looked for in
            the folder, its ``tokenizer/`` sibling, then ``fallback_tokenizer_dirs``.
        dtype: compute dtype, bf16 (default), fp16 (feed-forward ``wo`` kept fp32) or fp32.
        device: compute device.
        fallback_tokenizer_dirs: folders searched last for a tokenizer (e.g. ComfyUI's bundled T5 tokenizer).
        offload_device: if set, the weights live here and visit ``device`` only during ``encode``.
        weight_dtype: Linear weight storage: None (float8 files stay float8, others use ``dtype``),
            ``torch.float8_e4m3fn``/``float8_e5m2`` (quantize at load), or ``dtype`` (dequantize float8 files).

    Raises:
        T5Error: the path, tokenizer or dtypes cannot be used; the message names the file and what was expected.
    """
    source = resolve_source(path)
    tokenizer_path = find_tokenizer(tokenizer, source.tokenizer_dirs, fallback_tokenizer_dirs, source.path)
    t5_tokenizer = load_tokenizer(tokenizer_path)
    model, precision = load_t5_model(source, dtype, weight_dtype, offload_device or device)
    check_tokenizer(t5_tokenizer, model.config.vocab_size, tokenizer_path, source.path)
    logger.info("%s: T5 tokenizer from %s (%d tokens)", source.path, tokenizer_path, len(t5_tokenizer))
    return T5PromptEncoder(model, t5_tokenizer, precision, device=device, offload_device=offload_device)


def check_caption_width(t5_hidden_size: int, dit_caption_channels: int) -> None:
    """Raise a ValueError unless the T5 width C equals the DiT's caption channels (input width of ``y_embedder``)."""
    if t5_hidden_size != dit_caption_channels:
        raise ValueError(
            f"T5 hidden size {t5_hidden_size} does not match the DiT's caption channels {dit_caption_channels}: "
            "the text encoder does not belong to this PixArt model. PixArt-Sigma and PixArt-alpha checkpoints expect "
            "T5 v1.1 XXL (4096 channels): load t5xxl_fp16.safetensors or the text_encoder/ folder of a PixArt repo."
        )
