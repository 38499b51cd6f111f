"""A PixArt ControlNet as a ComfyUI ``CONTROL_NET``: a ``comfy.controlnet.ControlNet`` whose control model is
``pixart.controlnet.PixArtControlNet``, and the hook through which the PixArt model adds the control it is given.

What ComfyUI's own machinery does, unchanged: Apply ControlNet (``ControlNetApplyAdvanced``) copies the ControlNet per
conditioning with its hint image, strength, start / end percent and VAE, and chains it to the conditioning's earlier
ControlNet (``previous_controlnet``); before each model call the sampler asks it for the control
(``get_control``): the hint is resized to the image, VAE-encoded and scaled into the model's latent space
(``latent_format``), the residuals are computed, scaled by the strength and added to the chained ones
(``control_merge``); outside start..end percent it gives none. The model receives them as
``control["output"][i]``, added to the input of PixArt block i + 1 (after block i, as ComfyUI's SD3 ControlNets do).

The copies need the base model: ``pre_run`` hands the sampled model's PixArt transformer to the control model, which
runs the base's embeddings and block 0 (through ComfyUI's block patches) before the copies. Imports ComfyUI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import comfy.controlnet
import comfy.latent_formats
import comfy.model_management as mm
import comfy.ops
import torch

from ..pixart import PixArtTransformer
from ..pixart.block_hooks import BlockHook
from ..pixart.controlnet import PixArtControlNet, add_to_block_inputs, control_residuals, read_controlnet
from .comfy_blocks import comfy_block_hook

log = logging.getLogger(__name__)
CONTROL_KEY = "output"  # control["output"][i]: residual for the input of block i + 1
CONDS = ["caption_mask", "c_size", "c_ar"]  # the PixArt model's extra conds the copies need too
SUPPORTED_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


class PixArtControlModel(torch.nn.Module):
    """The copies as ComfyUI's ControlNet calls its control model."""

    def __init__(self, controlnet: PixArtControlNet):
        super().__init__()
        self.controlnet = controlnet
        # ControlNet.get_control casts the call's tensors to this dtype. float32 keeps them as the sampler holds them;
        # forward casts them to the base model's compute dtype, as the base model's own call does.
        self.dtype = torch.float32

    def forward(
        self,
        x,
        hint,
        timesteps,
        context,
        caption_mask=None,
        c_size=None,
        c_ar=None,
        base_model: PixArtTransformer | None = None,
        base_dtype: torch.dtype | None = None,
        transformer_options: dict | None = None,
    ) -> dict:
        """(B, C_in, H, W) model input, (B or 1, C_in, H, W) hint latent, (B,) timesteps, (B, L, C_caption) caption
        -> {"output": N residuals, each (B, N_tok, C)}."""
        if base_model is None:
            raise RuntimeError("PixArt Sigma ControlNet: no base model; it runs only inside a sampler (pre_run)")
        hooks = [] if transformer_options is None else [comfy_block_hook(base_model.blocks, dict(transformer_options))]
        # cast as BaseModel.apply_model casts the base model's call (timesteps stay float32)
        hint, x, context, caption_mask, c_size, c_ar = (
            None if t is None else t.to(base_dtype) for t in (hint, x, context, caption_mask, c_size, c_ar)
        )
        residuals = control_residuals(
            self.controlnet, base_model, hint, x, timesteps, context, caption_mask, c_size, c_ar, hooks
        )
        return {CONTROL_KEY: residuals}


class PixArtControlNetPatch(comfy.controlnet.ControlNet):
    """A PixArt ControlNet for ComfyUI's Apply ControlNet: a latent-space ControlNet (the hint goes through the VAE,
    then the sampled model's latent format) that takes the base model in ``pre_run``."""

    def __init__(self, control_model: PixArtControlModel | None = None, load_device=None):
        # SDXL until pre_run sees the model: a latent format must be set for Apply ControlNet to keep its VAE.
        super().__init__(
            control_model,
            compression_ratio=1,
            latent_format=comfy.latent_formats.SDXL(),
            load_device=load_device,
            extra_conds=list(CONDS),
        )

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        base = model.diffusion_model
        if not isinstance(base, PixArtTransformer):
            raise ValueError(
                f"PixArt Sigma ControlNet: the MODEL is {type(base).__name__}, not a PixArt model from PixArt Sigma "
                "DiT Loader; load the DiT with PixArt Sigma DiT Loader to use a PixArt ControlNet"
            )
        self.control_model.controlnet.check_base(base.config)
        self.latent_format = model.latent_format  # the hint latent lives where the model denoises
        dtype = model.manual_cast_dtype if model.manual_cast_dtype is not None else model.get_dtype()
        self.set_extra_arg("base_model", base)
        self.set_extra_arg("base_dtype", dtype)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        self.set_extra_arg("transformer_options", transformer_options)  # block 0 runs through the block patches
        try:
            return super().get_control(x_noisy, t, cond, batched_number, transformer_options)
        finally:
            self.extra_args.pop("transformer_options", None)

    def cleanup(self):
        for name in ("base_model", "base_dtype", "transformer_options"):
            self.extra_args.pop(name, None)
        super().cleanup()

    def copy(self):
        c = PixArtControlNetPatch(None, load_device=self.load_device)
        c.control_model = self.control_model
        c.control_model_wrapped = self.control_model_wrapped
        self.copy_to(c)
        return c


def load_control_net(path: str | Path) -> PixArtControlNetPatch:
    """A PixArt ControlNet file as a ComfyUI ``CONTROL_NET``; weights in the dtype ComfyUI picks for the device."""
    from .comfy_model import comfy_attention  # comfy_model imports this module for control_block_hook

    state_dict, config = read_controlnet(path)
    params = sum(t.numel() for t in state_dict.values())
    stored = next(iter(state_dict.values())).dtype
    dtype = mm.unet_dtype(model_params=params, supported_dtypes=SUPPORTED_DTYPES, weight_dtype=stored)
    offload = mm.unet_offload_device()
    with torch.device("meta"):
        # manual_cast: weights are cast per call to the dtype the base model computes in
        controlnet = PixArtControlNet(
            config, dtype=dtype, operations=comfy.ops.manual_cast, attention=comfy_attention({}), source=str(path)
        )
    controlnet.load_state_dict({k: v.to(device=offload, dtype=dtype) for k, v in state_dict.items()}, assign=True)
    log.info("PixArt ControlNet loaded from %s: %s, weights %s", path, config, dtype)
    return PixArtControlNetPatch(PixArtControlModel(controlnet.eval()), load_device=mm.get_torch_device())


def control_block_hook(control: dict | None) -> BlockHook | None:
    """The block hook adding ComfyUI's ``control`` (a model call's merged ControlNet outputs) to the inputs of the
    PixArt blocks, or None when there is none. Controls other than PixArt ControlNets' (UNet-style ``input`` /
    ``middle`` entries) are refused."""
    if not control:
        return None
    foreign = [key for key, values in control.items() if key != CONTROL_KEY and any(v is not None for v in values)]
    if foreign:
        raise ValueError(
            f"PixArt Sigma: the conditioning carries a ControlNet output ({', '.join(foreign)}) that is not a PixArt "
            "ControlNet's; load PixArt ControlNets with PixArt Sigma ControlNet Loader"
        )
    residuals = {i + 1: r for i, r in enumerate(control.get(CONTROL_KEY, [])) if r is not None}
    return add_to_block_inputs(residuals) if residuals else None
