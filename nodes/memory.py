"""Memory the nodes need for a size, estimated before anything is allocated, so that a size that cannot fit is
refused with the numbers and a way out instead of reaching the allocator (a raw "can't allocate memory" text) or
the OS (which kills ComfyUI).

The estimates are lower bounds of what sampling really takes: a refusal means the size cannot fit, while a size
that passes may still be tight. No ComfyUI imports here; the nodes pass in the free memory.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
# (B, N, C) tensors alive at once in one block: residual stream, modulated input, q, k, v and the attention
# output when every token runs at once; with token chunking (CPU) the per-token work of the MLP and projections
# is done in small pieces, so only the residual stream and the attention's q, k, v and output stay whole.
WHOLE_TOKEN_TENSORS = 6
CHUNKED_TOKEN_TENSORS = 5
MLP_RATIO_TENSORS = 2  # the MLP's hidden layer and its activation, each mlp_ratio x C wide per token
IMAGE_CHANNELS = 3  # a decoded IMAGE is (B, H, W, 3) float32


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
    config, latent_shape: tuple[int, ...], cfg: float, element_bytes: int, kv_compress=None, token_chunk=None
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


def sampling_refusal(need: SamplingMemory, free: int, size: str, kv_on: bool) -> str | None:
    """The message refusing a sampling that cannot fit ``free`` bytes, else None."""
    if need.total <= free:
        return None
    way_out = "use a smaller size or batch_size"
    if not kv_on:
        way_out += ", or KV compression in every block (PixArt Sigma DiT Loader kv_layers 'all': keys and values / 4)"
    return (
        f"PixArt Sigma Sampler: {size} needs at least {need.total / GIB:.1f} GiB for sampling "
        f"({need.batch} x {need.tokens} tokens: activations {need.activations / GIB:.1f} GiB, keys/values "
        f"{need.attention / GIB:.1f} GiB, latents {need.latents / GIB:.1f} GiB) but {free / GIB:.1f} GiB are free; "
        f"{way_out}"
    )


def image_bytes(batch: int, width: int, height: int) -> int:
    """Bytes of the empty latent and of the decoded images of ``batch`` images of width x height px (float32)."""
    latent = batch * 4 * (height // 8) * (width // 8) * 4
    images = batch * height * width * IMAGE_CHANNELS * 4
    return latent + images


def size_refusal(batch: int, width: int, height: int, free: int) -> str | None:
    """The message refusing a size whose latent and decoded images alone exceed ``free`` bytes, else None."""
    need = image_bytes(batch, width, height)
    if need <= free:
        return None
    return (
        f"PixArt Sigma Resolution: {batch} x {width}x{height} px needs {need / GIB:.1f} GiB for the latent and the "
        f"decoded images alone, but {free / GIB:.1f} GiB are free; use a smaller batch_size or size"
    )
