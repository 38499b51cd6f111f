"""Memory a size needs, checked before anything is allocated, so that a size that cannot fit is refused with the
numbers and a way out instead of reaching the allocator (a raw "can't allocate memory" text) or the OS (which kills
ComfyUI). The sampling estimate itself is ``pixart.memory.sampling_memory``, checked for every sampler by the MODEL
(dit/memory.py); here are the ComfyUI side (decoded images) and the messages. No imports of ComfyUI or of the
package: the callers pass in the free memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pixart.memory import SamplingMemory

GIB = 1 << 30
IMAGE_CHANNELS = 3  # a decoded IMAGE is (B, H, W, 3) float32


def sampling_refusal(need: SamplingMemory, free: int, size: str, kv_on: bool, where: str) -> str | None:
    """The message refusing a sampling of ``size`` (e.g. "1 x 8192x8192 px") whose smallest model call needs more
    than the ``free`` bytes ``where`` says (the device and what was counted), else None."""
    if need.total <= free:
        return None
    way_out = "use a smaller size or batch_size (EmptyLatentImage, PixArt Sigma Resolution)"
    if not kv_on:
        way_out += ", or KV compression in every block (PixArt Sigma DiT Loader kv_layers 'all': keys and values / 4)"
    return (
        f"PixArt Sigma: sampling {size} needs at least {need.total / GIB:.1f} GiB per model call "
        f"({need.batch} x {need.tokens} tokens: activations {need.activations / GIB:.1f} GiB, keys/values "
        f"{need.attention / GIB:.1f} GiB, latents {need.latents / GIB:.1f} GiB) but {free / GIB:.1f} GiB are free "
        f"{where}; {way_out}"
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
