"""Prompt -> T5 hidden states and mask, the way diffusers' ``PixArtSigmaPipeline.encode_prompt`` builds them.

Per prompt (the ``clean_caption=False`` path of ``encode_prompt``, its default): lowercase and strip, tokenize with
``</s>`` appended, truncate to ``max_length`` tokens (300 for Sigma, 120 for alpha; PixArt-Sigma paper §3.1), pad with
``<pad>`` to exactly ``max_length``, and run the encoder with the attention mask. The negative prompt ("" by
default) goes through the same call. Not implemented: diffusers' ``clean_caption=True`` (DeepFloyd IF's regex/HTML
caption cleaner, which needs bs4 and ftfy); ``lowercase=False`` keeps the case instead.

Outputs: hidden states (B, L, C) float32 and mask (B, L) int64 (1 = real token incl. ``</s>``, 0 = padding), on the
offload device when one is set (so nothing stays on the GPU), else on the compute device.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase, T5EncoderModel

from ..config import CAPTION_TOKENS
from ..errors import short
from .loading import Precision

logger = logging.getLogger(__name__)

SIGMA_MAX_LENGTH = CAPTION_TOKENS["sigma"]  # caption tokens of PixArt-Sigma
ALPHA_MAX_LENGTH = CAPTION_TOKENS["alpha"]  # caption tokens of PixArt-alpha
CHARS_PER_TOKEN = 64  # a prompt is cut to max_length * CHARS_PER_TOKEN characters before it is tokenised


def preprocess_prompt(prompt: str, lowercase: bool = True) -> str:
    """diffusers' default caption preprocessing (``clean_caption=False``): ``prompt.lower().strip()``."""
    return prompt.lower().strip() if lowercase else prompt.strip()


class T5PromptEncoder:
    """A loaded T5 encoder with its tokenizer; build it with :func:`pixart.text_encoder.load_t5`.

    Attributes:
        hidden_size: C, the T5 width (``d_model``; 4096 for T5 v1.1 XXL).
        dtype: compute dtype (bf16 / fp16 / fp32); ``weight_dtype`` is the Linear storage dtype (may be float8).
        device: compute device; ``offload_device`` (or None) is where the weights wait between calls.
    """

    def __init__(
        self,
        model: T5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        precision: Precision,
        device: torch.device | str = "cpu",
        offload_device: torch.device | str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.precision = precision
        self.device = torch.device(device)
        self.offload_device = None if offload_device is None else torch.device(offload_device)

    @property
    def hidden_size(self) -> int:
        """C, the width of the hidden states."""
        return int(self.model.config.d_model)

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the encoder."""
        return self.precision.compute

    @property
    def weight_dtype(self) -> torch.dtype:
        """Storage dtype of the Linear weights (a float8 dtype, or the compute dtype)."""
        return self.precision.storage or self.precision.compute

    @property
    def output_device(self) -> torch.device:
        """Where ``encode`` puts its results: the offload device if set, else the compute device."""
        return self.offload_device or self.device

    def to(self, device: torch.device | str) -> T5PromptEncoder:
        """Make ``device`` the compute device and move the weights there now; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def offload(self) -> None:
        """Move the weights to the offload device (no-op when none is set)."""
        if self.offload_device is not None:
            self.model.to(self.offload_device)

    def tokenize(self, prompts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
        """Token ids and mask, both (B, max_length) int64, padded with ``<pad>`` and truncated with a warning.

        Only the first ``max_length * CHARS_PER_TOKEN`` characters of a prompt are tokenised (a T5 token covers a
        few characters), so a huge prompt costs no more than a long one; the warning says what was cut.
        """
        limit = max_length * CHARS_PER_TOKEN
        cut = [len(p) - limit if len(p) > limit else 0 for p in prompts]
        prompts = [p[:limit] for p in prompts]
        batch = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        self._warn_truncation(prompts, max_length, cut)
        return batch["input_ids"], batch["attention_mask"]

    def _warn_truncation(self, prompts: list[str], max_length: int, cut: list[int]) -> None:
        """Log a warning for each prompt over ``max_length`` tokens (``</s>`` included) with the dropped count, and
        the characters ``cut`` from its end before tokenising."""
        full = self.tokenizer(prompts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        for index, ids in enumerate(full):
            dropped = len(ids) - max_length  # truncation keeps max_length - 1 tokens, then appends </s>
            if dropped > 0 or cut[index]:
                lost = self.tokenizer.decode(ids[max_length - 1 : -1], skip_special_tokens=True)
                lost = short(lost, 120)
                beyond = (
                    f" (and the {cut[index]} characters after the first {len(prompts[index])})" if cut[index] else ""
                )
                logger.warning(
                    "T5 prompt %d is %d tokens with </s>, over max_length=%d: dropped the last %d tokens%s: %r",
                    index,
                    len(ids),
                    max_length,
                    max(dropped, 0),
                    beyond,
                    lost,
                )

    def encode(
        self, prompts: str | list[str], max_length: int = SIGMA_MAX_LENGTH, lowercase: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Encode a prompt or a batch of prompts.

        Args:
            prompts: B prompts (a str is a batch of one); "" is the usual negative prompt.
            max_length: L, tokens per prompt: 300 for PixArt-Sigma, 120 for PixArt-alpha.
            lowercase: lowercase prompts like diffusers' default (``clean_caption=False``) path.

        Returns:
            hidden_states: (B, L, C) float32; padded positions hold T5's outputs for ``<pad>``, as in diffusers.
            mask: (B, L) int64, 1 for real tokens (``</s>`` included), 0 for padding.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts: expected a str or a non-empty list of str, found {prompts!r}")
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length: expected a positive int (Sigma 300, alpha 120), found {max_length!r}")
        input_ids, mask = self.tokenize([preprocess_prompt(p, lowercase) for p in prompts], max_length)
        try:
            self.model.to(self.device)
            with torch.no_grad():
                out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device))
            hidden_states = out.last_hidden_state.to(self.output_device, torch.float32)  # (B, L, C)
        finally:
            self.offload()
        return hidden_states, mask.to(self.output_device)

    def __repr__(self) -> str:
        cfg = self.model.config
        return (
            f"T5PromptEncoder(d_model={cfg.d_model}, layers={cfg.num_layers}, dtype={self.dtype}, "
            f"weight_dtype={self.weight_dtype}, device={self.device}, offload_device={self.offload_device})"
        )
