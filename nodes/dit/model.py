"""PixArt-Sigma/alpha as a ComfyUI MODEL: a ``BaseModel`` around ``pixart.PixArtTransformer`` inside a
``ModelPatcher``, with its attention (ComfyUI's backend and per-model override), its memory check (memory.py) and
its noise schedule as ComfyUI model sampling.

ComfyUI's samplers, memory management, previews and interrupts then treat it like any built-in model. Another node
may run each model call itself: a callable under ``MODEL_CALL`` in ``transformer_options`` (PixArt Sigma Cache's
per-run state) gets the forward and the call's arguments.
"""

from __future__ import annotations

import logging

import comfy.conds
import comfy.latent_formats
import comfy.ldm.modules.attention as comfy_attention_module
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.supported_models_base
import torch

from ...pixart import CheckpointError, KVCompress, PixArtTransformer, read_checkpoint
from ...pixart.attention import AttentionFn, sdpa_attention
from ...pixart.sampling import NoiseSchedule
from ...pixart.text_encoder import check_caption_width
from ..common import check_latent, pad_caption
from .blocks import comfy_block_hook, control_block_hook
from .memory import add_memory_check, call_memory

log = logging.getLogger(__name__)
SUPPORTED_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
MODEL_CALL = "pixart_model_call"  # transformer_options key: a callable that runs each model call (see _forward)
SAMPLING_KINDS = {"epsilon": comfy.model_sampling.EPS, "v_prediction": comfy.model_sampling.V_PREDICTION}


ATTENTION_OVERRIDE = "optimized_attention_override"  # ComfyUI's per-model attention choice in transformer_options


def backend_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    backend,
    transformer_options: dict | None = None,
):
    """The ``pixart`` attention contract on one ComfyUI attention function (``optimized_attention`` or an
    ``attention_*`` of ``comfy.ldm.modules.attention``), called with the model call's ``transformer_options`` so
    that ComfyUI's ``wrap_attn`` applies an ``optimized_attention_override`` set on the model.

    Args:
        q: (B, h, N, d); k, v: (B, h, N', d) (N' < N with KV compression); bias: None or (B, 1, 1, N') additive
            caption-mask bias (0 keep, -inf drop).
    Returns:
        (B, h, N, d).
    """
    b, heads, n, d = q.shape
    bias = None if bias is None else bias.to(q.dtype)
    options = {} if transformer_options is None else {"transformer_options": transformer_options}
    out = backend(q, k, v, heads, mask=bias, skip_reshape=True, **options)  # (B, N, h*d)
    return out.reshape(b, n, heads, d).transpose(1, 2)


def comfy_attention(transformer_options: dict) -> AttentionFn:
    """The attention of one model call: ComfyUI's ``optimized_attention`` (the user's backend) through
    ``backend_attention`` with the call's ``transformer_options``, so a per-model override routes every attention
    through it (on any device). Without an override, on CPU torch's fused SDPA kernel is used instead: ComfyUI's CPU
    default there is its Python sub-quadratic attention, which makes a whole forward several times slower
    (scripts/bench_dit.py)."""
    override = ATTENTION_OVERRIDE in transformer_options

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if q.device.type == "cpu" and not override:
            return sdpa_attention(q, k, v, bias)
        return backend_attention(q, k, v, bias, comfy_attention_module.optimized_attention, transformer_options)

    return attention


class ComfyPixArtTransformer(PixArtTransformer):
    """The DiT with ComfyUI's call signature; returns epsilon only (the learned variance is not used)."""

    def __init__(self, pixart_config, dtype=None, device=None, operations=None, **_unused):
        # float8 storage: Linear/Conv2d weights stay float8 (ComfyUI's casting ops upcast them per call), the
        # modulation tables stay float (pixart.model.table_dtype). KV compression: load_model sets it.
        super().__init__(pixart_config, None, dtype, device, operations, attention=comfy_attention({}))
        self.dtype = dtype  # read by BaseModel.get_dtype()

    def forward(
        self, x, timesteps, context, caption_mask=None, c_size=None, c_ar=None, transformer_options=None, **kwargs
    ):
        """ComfyUI's call: runs ``_forward`` through the ``DIFFUSION_MODEL`` wrappers in ``transformer_options``
        (EasyCache and other stock nodes), as ComfyUI's own DiTs do."""
        transformer_options = {} if transformer_options is None else transformer_options
        wrappers = comfy.patcher_extension.get_all_wrappers(
            comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options
        )
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers)
        return executor.execute(x, timesteps, context, caption_mask, c_size, c_ar, transformer_options, **kwargs)

    def _forward(self, x, timesteps, context, caption_mask, c_size, c_ar, transformer_options, control=None, **_unused):
        """(B, C_in, H, W) latents, (B,) timesteps, (B, L, C_caption) caption -> (B, C_in, H, W) epsilon. ``control``:
        PixArt ControlNet residuals for the block inputs (nodes/controlnet.py). Other keyword arguments of
        ComfyUI that PixArt has no use for are ignored."""
        cfg = self.config
        check_latent(cfg, tuple(x.shape), "PixArt Sigma")
        check_caption_width(context.shape[-1], cfg.caption_channels)
        hook = comfy_block_hook(self.blocks, dict(transformer_options))
        attention = comfy_attention(transformer_options)  # this call's: a per-model override applies
        controls = [h for h in (control_block_hook(control),) if h is not None]
        forward = super().forward

        def run(x, timesteps, context, caption_mask, c_size, c_ar, block_hooks=()):
            hooks = [*block_hooks, *controls, hook]  # a step cache's hooks outside the control, ComfyUI's inside
            out = forward(x, timesteps, context, caption_mask, c_size, c_ar, hooks, attention)
            return out[:, : cfg.in_channels]

        model_call = transformer_options.get(MODEL_CALL)  # PixArt Sigma Cache, during a sampling run
        if model_call is None:
            return run(x, timesteps, context, caption_mask, c_size, c_ar)
        return model_call(run, len(self.blocks), x, timesteps, context, caption_mask, c_size, c_ar, transformer_options)


class PixArtSigmaConfig(comfy.supported_models_base.BASE):
    """ComfyUI model config of PixArt-Sigma: SDXL latents; EPS with linear betas 1e-4..0.02 (``sqrt_linear`` here)."""

    unet_config: dict = {}
    unet_extra_config: dict = {}
    sampling_settings = {
        "beta_schedule": "sqrt_linear",
        "linear_start": NoiseSchedule.beta_start,
        "linear_end": NoiseSchedule.beta_end,
        "timesteps": NoiseSchedule.train_steps,
    }
    latent_format = comfy.latent_formats.SDXL
    memory_usage_factor = 0.5
    supported_inference_dtypes = SUPPORTED_DTYPES


class PixArtAlphaConfig(PixArtSigmaConfig):
    """PixArt-alpha: as Sigma, with SD1.5 latents."""

    latent_format = comfy.latent_formats.SD15


class PixArtModel(comfy.model_base.BaseModel):
    """ComfyUI model: passes the padded caption, its mask and (alpha) the size micro-conditions to the DiT."""

    def __init__(self, model_config, device=None):
        EPS = comfy.model_base.ModelType.EPS  # noqa: N806
        super().__init__(model_config, EPS, device=device, unet_model=ComfyPixArtTransformer)

    def memory_required(self, input_shape, cond_shapes=None):
        """Bytes one call on ``input_shape`` latents needs beyond the weights, as ComfyUI asks when it loads the model
        and batches conds: pixart's estimate (``memory.call_memory``) on the device sampling runs on."""
        if len(input_shape) != 4:
            return super().memory_required(input_shape, cond_shapes=cond_shapes or {})
        patcher = self.current_patcher
        device = patcher.load_device if patcher is not None else mm.get_torch_device()
        return call_memory(self, input_shape, device).total

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        cfg = self.diffusion_model.config
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            caption, mask = pad_caption(cross_attn, kwargs.get("attention_mask"), cfg.caption_tokens)
            out["c_crossattn"] = comfy.conds.CONDRegular(caption)
            out["caption_mask"] = comfy.conds.CONDRegular(mask)
        width, height = kwargs.get("width"), kwargs.get("height")
        if cfg.micro_conditions and width is not None and height is not None:
            out["c_size"] = comfy.conds.CONDRegular(torch.FloatTensor([[height, width]]))
            out["c_ar"] = comfy.conds.CONDRegular(torch.FloatTensor([[kwargs.get("aspect_ratio", height / width)]]))
        return out


def load_model(
    path, variant="auto", weight_dtype: torch.dtype | None = None, kv: KVCompress | None = None, disable_dynamic=False
):
    """Read a PixArt checkpoint and wrap it for ComfyUI.

    The patcher remembers this call (``cached_patcher_init``), so ComfyUI 0.33 can load a fresh copy of the model
    for each GPU of its MultiGPU CFG split (``ModelPatcher.deepclone_multigpu``).

    Args:
        weight_dtype: None lets ComfyUI choose for the device.
        kv: KV compression or None; checked against the checkpoint's depth before the weights are loaded.
        disable_dynamic: passed by ComfyUI when it calls the remembered loader; the patcher is always a plain
            ``ModelPatcher``, so it changes nothing.
    """
    state_dict, config = read_checkpoint(path, variant)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    if weight_dtype is None:
        params = sum(t.numel() for t in state_dict.values())
        stored = next(iter(state_dict.values())).dtype
        weight_dtype = mm.unet_dtype(model_params=params, supported_dtypes=SUPPORTED_DTYPES, weight_dtype=stored)
    manual_cast = mm.unet_manual_cast(weight_dtype, load_device, SUPPORTED_DTYPES)
    config_class = PixArtAlphaConfig if config.family == "alpha" else PixArtSigmaConfig
    model_config = config_class({"pixart_config": config})
    model_config.set_inference_dtype(weight_dtype, manual_cast)
    model = PixArtModel(model_config)
    model.diffusion_model.set_kv_compress(kv)
    missing, unexpected = model.diffusion_model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit: missing {missing[:8]}, unexpected {unexpected[:8]}")
    log.info(
        "PixArt DiT loaded from %s: %s; weights %s, compute %s, KV %s",
        path,
        config,
        weight_dtype,
        manual_cast,
        kv,
    )
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    patcher.cached_patcher_init = (load_model, (path, variant, weight_dtype, kv))
    add_memory_check(patcher)  # every sampler refuses a latent that cannot fit, before anything is allocated
    return patcher


# --- the MODEL's noise schedule -----------------------------------------------------------------------------------


def model_sampling_for(schedule: NoiseSchedule, model_config=None) -> comfy.model_sampling.ModelSamplingDiscrete:
    """ComfyUI's discrete model sampling for a PixArt noise schedule: EPS or V_PREDICTION on the schedule's sigmas
    (zero-terminal-SNR with diffusers' terminal alpha_bar 2^-24, so samplers match the reference pipelines)."""

    class PixArtModelSampling(comfy.model_sampling.ModelSamplingDiscrete, SAMPLING_KINDS[schedule.prediction]):
        noise_schedule = schedule  # read back by noise_schedule_of

    sampling = PixArtModelSampling(model_config, zsnr=False)
    sampling.set_sigmas(schedule.sigmas().float())
    return sampling


def with_noise_schedule(model, schedule: NoiseSchedule):
    """A clone of the MODEL (ModelPatcher) that samples with ``schedule``; stock KSampler / KSamplerAdvanced then
    sample a v-prediction or zero-terminal-SNR checkpoint as diffusers does."""
    patched = model.clone()
    patched.add_object_patch("model_sampling", model_sampling_for(schedule, patched.model.model_config))
    return patched


def noise_schedule_of(model) -> NoiseSchedule | None:
    """The NoiseSchedule a MODEL samples with when ``with_noise_schedule`` gave it one (PixArt Sigma DiT Loader from a
    pipeline folder's scheduler config, or PixArt Sigma Noise Schedule), else None (ComfyUI's default sampling)."""
    return getattr(model.get_model_object("model_sampling"), "noise_schedule", None)


def prediction_of(model) -> str:
    """The MODEL's prediction type, "epsilon" or "v_prediction": the class in its model sampling's MRO that defines
    ``calculate_denoised`` (ComfyUI's V_PREDICTION derives from EPS); another class's name for other kinds."""
    sampling = model.get_model_object("model_sampling")
    names = {kind: name for name, kind in SAMPLING_KINDS.items()}
    kind = next(k for k in type(sampling).__mro__ if "calculate_denoised" in vars(k))
    return names.get(kind, kind.__name__)


def model_noise_schedule(model) -> NoiseSchedule:
    """The MODEL's own noise schedule: the one ``with_noise_schedule`` gave it, else linear betas (every PixArt
    model's, as ComfyUI's default model sampling of our MODEL holds them) over its model sampling's training steps,
    with its prediction type (``prediction_of``)."""
    carried = noise_schedule_of(model)
    if carried is not None:
        return carried
    sampling = model.get_model_object("model_sampling")
    return NoiseSchedule(prediction=prediction_of(model), train_steps=len(sampling.sigmas))
