"""Activation memory of one sampling step of the PixArt transformer, estimated from its config before anything is
allocated: the per-block tensor counts mirror ``pixart.model.PixArtBlock.forward``. Callers compare it with the free
memory of their device (the nodes: nodes/memory.py).

The estimate is a lower bound of what sampling really takes: a size above the free memory cannot fit, while a size
below it may still be tight.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import KVCompress, PixArtConfig

# (B, N, C) tensors alive at once in one block (PixArtBlock.forward): the input stream, modulated input, q, k, v and
# the attention output when every token runs at once; with token chunking (CPU) the per-token work of the MLP and
# projections is done in small pieces, so only the input stream and the attention's q, k, v and output stay whole
# (the block's output stream is allocated after self-attention, when q, k, v are gone).
WHOLE_TOKEN_TENSORS = 6
CHUNKED_TOKEN_TENSORS = 5
MLP_RATIO_TENSORS = 2  # the MLP's hidden layer and its activation, each mlp_ratio x C wide per token


@dataclass(frozen=True)
class SamplingMemory:
    """Bytes one sampling step needs beyond the weights, by part."""

    batch: int  # samples per model call: the latent batch, doubled when cond and uncond run together (cfg != 1)
    tokens: int  # N, image tokens per sample
    kv_tokens: int  # keys/values per sample in the largest self-attention (N, or N / factor^2 if all compressed)
    activations: int
    attention: int
    latents: int

    @property
    def total(self) -> int:
        return self.activations + self.attention + self.latents


def sampling_memory(
    config: PixArtConfig,
    latent_shape: tuple[int, ...],
    cfg: float,
    element_bytes: int,
    kv_compress: KVCompress | None = None,
    token_chunk: int | None = None,
) -> SamplingMemory:
    """Lower bound of the memory one DiT call of a sampling step takes.

    Args:
        config: the model's PixArtConfig (hidden size, heads, patch, depth, MLP ratio).
        latent_shape: (B, 4, H/8, W/8) of the latent being sampled.
        cfg: guidance scale; != 1 runs the prompt and the negative prompt as one doubled batch.
        element_bytes: bytes per activation element of the compute dtype (4 fp32, 2 fp16/bf16).
        kv_compress: the model's KVCompress or None; keys and values shrink by factor^2 in its blocks.
        token_chunk: tokens per chunk of the per-token work (None: all at once).
    Returns:
        SamplingMemory in bytes. Attention scores are not counted: every attention backend ComfyUI and pixart use
        (flash / memory-efficient kernels, ComfyUI's split and sub-quadratic attention) works on tiles of them.
    """
    b = latent_shape[0] * (2 if cfg != 1 else 1)
    grid_h, grid_w = latent_shape[2] // config.patch_size, latent_shape[3] // config.patch_size
    n, c = grid_h * grid_w, config.hidden_size
    kv_tokens = n
    if kv_compress is not None and len(kv_compress.layer_set(config.depth)) == config.depth:
        f = kv_compress.factor
        kv_tokens = -(-grid_h // f) * -(-grid_w // f)
    mlp = int(config.mlp_ratio * c)
    if token_chunk is None:
        activations = b * n * (WHOLE_TOKEN_TENSORS * c + MLP_RATIO_TENSORS * mlp) * element_bytes
    else:
        activations = (
            b * n * CHUNKED_TOKEN_TENSORS * c + min(n, token_chunk) * MLP_RATIO_TENSORS * mlp
        ) * element_bytes
    attention = 2 * b * kv_tokens * c * element_bytes  # compressed keys and values (the full ones are counted above)
    latent_elements = 1
    for side in latent_shape:
        latent_elements *= side
    latents = 6 * b * latent_elements * 4  # x, noise, model in/out, denoised, the sampler's history; float32
    return SamplingMemory(b, n, kv_tokens, activations, attention, latents)
