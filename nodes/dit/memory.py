"""The memory check every sampler passes: the MODEL's own estimate (``PixArtModel.memory_required``, from
``pixart.memory.sampling_memory``) and a ``PREPARE_SAMPLING`` wrapper, registered on the patcher by the loader, that
refuses a latent whose smallest model call cannot fit before ComfyUI loads or allocates anything for it. So the
stock EmptyLatentImage + KSampler, SamplerCustomAdvanced and PixArt Sigma Sampler are refused alike, with ComfyUI's
own free-memory accounting.
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.patcher_extension
import torch

from ...pixart.errors import SizeError
from ...pixart.memory import SamplingMemory, sampling_memory
from ...pixart.model import resolve_token_chunk
from ..memory import sampling_refusal

try:
    import comfy.memory_management as dynamic_vram  # ComfyUI with dynamic VRAM (0.33); 0.3.64 has none
except ImportError:
    dynamic_vram = None

WRAPPER_KEY = "pixart_sigma_memory_check"


def call_memory(model, input_shape, device: torch.device) -> SamplingMemory:
    """Lower bound of the memory one call of a PixArt ``BaseModel`` on (B, C_in, H, W) latents takes on ``device``
    (its compute dtype, KV compression and token chunking), beyond the weights. ComfyUI runs the prompt and the
    negative prompt as separate calls when memory is short, so one call holds the latent batch once."""
    dit = model.diffusion_model
    compute_dtype = getattr(model, "manual_cast_dtype", None) or model.get_dtype()
    element_bytes = max(compute_dtype.itemsize, 2)  # float8 weights compute in 16 bits or more
    token_chunk = resolve_token_chunk(dit.token_chunk, device)
    return sampling_memory(dit.config, tuple(input_shape), 1.0, element_bytes, dit.kv_compress, token_chunk)


def free_for_sampling(patcher, device: torch.device) -> tuple[int, str]:
    """(bytes, where) the sampling on ``device`` can have, counted as ComfyUI counts it: what is free now
    (``get_free_memory``; with dynamic VRAM plus what its allocator can reclaim, ``ModelPatcher.get_free_memory``),
    plus on a GPU the weights of the models ComfyUI may unload to make room (those under dynamic VRAM are in the
    reclaimable part already)."""
    own = getattr(patcher, "get_free_memory", None)  # 0.33: free memory plus dynamic VRAM's reclaimable part
    free = own(device) if own is not None else mm.get_free_memory(device)
    if device.type == "cpu":
        return free, f"on {device}"
    dynamic = bool(getattr(dynamic_vram, "aimdo_enabled", False))
    unloadable = sum(
        loaded.model_loaded_memory()
        for loaded in mm.current_loaded_models
        if loaded.device == device and not (dynamic and loaded.model.is_dynamic())
    )
    return free + unloadable, f"on {device} (counting {unloadable / 2**30:.1f} GiB of models ComfyUI can unload)"


def check_sampling_memory(patcher, latent_shape) -> None:
    """SizeError with the numbers and a way out when one model call on a (B, C_in, H, W) latent cannot fit the
    memory free for it on the patcher's device; other shapes are left to the model's own checks."""
    if len(latent_shape) != 4:
        return
    device = patcher.load_device
    need = call_memory(patcher.model, latent_shape, device)
    free, where = free_for_sampling(patcher, device)
    size = f"{latent_shape[0]} x {8 * latent_shape[3]}x{8 * latent_shape[2]} px"
    kv_on = patcher.model.diffusion_model.kv_compress is not None
    refusal = sampling_refusal(need, free, size, kv_on, where)
    if refusal is not None:
        raise SizeError(refusal)


def refuse_what_cannot_fit(executor, patcher, noise_shape, conds, *args, **kwargs):
    """ComfyUI's ``PREPARE_SAMPLING`` wrapper: the memory check, then ComfyUI's preparation (loading the models)."""
    check_sampling_memory(patcher, noise_shape)
    return executor(patcher, noise_shape, conds, *args, **kwargs)


def add_memory_check(patcher) -> None:
    """Register the check on a PixArt MODEL's patcher; its clones (LoRA, caches, noise schedules) keep it."""
    wrapper_type = comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING
    patcher.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, refuse_what_cannot_fit)
