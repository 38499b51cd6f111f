"""PixArt Sigma DiT Loader: a PixArt-Sigma/alpha transformer as a ComfyUI MODEL (dit/model.py), with optional KV
compression and the noise schedule of a diffusers pipeline folder."""

from __future__ import annotations

import logging

from ...pixart import VARIANTS, CheckpointError, KVCompress, parse_layers, pipeline_noise_schedule
from ...pixart.sampling import NoiseSchedule
from ..common import find_model, model_choices, pick, torch_dtype
from ..node_api import CATEGORY, choice_problem, io, schema
from .model import load_model, with_noise_schedule

log = logging.getLogger(__name__)

DIT_KINDS = ("diffusion_models", "checkpoints")
DIT_DTYPES = {"default": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DIT_DTYPES |= {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
KV_CHOICES = ("off", "avgpool", "uniform", "ave", "conv")  # shipped order: "off" and pixart's KV_MODES
KV_FACTOR = {"default": 2, "min": 2, "max": 8, "step": 1}


def kv_setting(kv_compress: str, kv_factor: int, kv_layers: str) -> KVCompress | None:
    """None (off) or the ``KVCompress`` of the loader's inputs; ValueError naming the input when they cannot work.
    The layers' syntax is checked here, before anything is loaded; their range against the checkpoint at load."""
    problem = choice_problem("kv_compress", kv_compress, KV_CHOICES)
    if problem is not None:
        raise ValueError(problem)
    if kv_compress == "off":
        return None
    try:
        layers = parse_layers(kv_layers)
    except ValueError as e:
        raise ValueError(f"kv_layers: {e}") from e
    return KVCompress(kv_compress, kv_factor, layers)


def kv_problem(kv_compress, kv_layers) -> str | None:
    """Why the KV settings cannot work before anything is loaded, else None (None values are links)."""
    if kv_compress is None or kv_layers is None:
        return choice_problem("kv_compress", kv_compress, KV_CHOICES)
    try:
        kv_setting(kv_compress, KV_FACTOR["default"], kv_layers)
    except ValueError as e:
        return str(e)
    return None


class PixArtSigmaDiTLoader(io.ComfyNode):
    """Loads a PixArt-Sigma/alpha transformer as a ComfyUI MODEL, with optional KV token compression."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaDiTLoader",
            display_name="PixArt Sigma DiT Loader",
            category=CATEGORY,
            search_aliases=["pixart checkpoint", "pixart unet", "kv compression"],
            description=(
                "PixArt Sigma DiT Loader: loads a PixArt-Sigma or PixArt-alpha transformer from "
                "models/diffusion_models or models/checkpoints (official .pth, .safetensors with official, diffusers "
                "or ComfyUI keys, or a diffusers folder). A diffusers pipeline folder's "
                "scheduler/scheduler_config.json gives the MODEL its noise schedule (v_prediction, "
                "rescale_betas_zero_snr, betas), so stock samplers sample it as diffusers does. KV compression "
                "shrinks the keys and values of self-attention for large images (2K, 4K)."
            ),
            inputs=[
                io.Combo.Input(
                    "ckpt_name",
                    options=model_choices(DIT_KINDS),
                    tooltip="PixArt transformer file, or diffusers folder (name/), in models/diffusion_models or "
                    "checkpoints.",
                ),
                io.Combo.Input(
                    "variant",
                    options=["auto", *VARIANTS],
                    default="auto",
                    tooltip="auto reads the architecture from the file; pick a preset (e.g. sigma-2k) when the file "
                    "does not record its base resolution.",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(DIT_DTYPES),
                    default="default",
                    tooltip="Weight precision; default lets ComfyUI choose for the device. fp8_* halve fp16's memory "
                    "and compute in a higher precision.",
                ),
                io.Combo.Input(
                    "kv_compress",
                    options=list(KV_CHOICES),
                    default="off",
                    tooltip="KV token compression in self-attention: off; avgpool (mean of each factor x factor "
                    "window, training-free); uniform (every factor-th token); ave (nearest resize); conv (needs a "
                    "checkpoint with trained KV-compression weights).",
                ),
                io.Int.Input(
                    "kv_factor",
                    **KV_FACTOR,
                    tooltip="Compression factor per side, 2 to 8: keys and values shrink by factor^2 in the chosen "
                    "blocks. Ignored when kv_compress is off.",
                ),
                io.String.Input(
                    "kv_layers",
                    default="auto",
                    tooltip="Blocks to compress: auto = second half (14-27 of 28, the official setting), or a list "
                    "like '14-27', '0,2,4-6', 'all'. Ignored when kv_compress is off.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    tooltip="The PixArt Sigma diffusion model, for PixArt Sigma Sampler, KSampler or any MODEL input."
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, kv_compress=None, kv_layers=None) -> bool | str:
        """kv_layers syntax and the kv_compress choice, before the prompt runs (ComfyUI keeps checking the rest)."""
        problem = kv_problem(kv_compress, kv_layers)
        return True if problem is None else f"PixArt Sigma DiT Loader: {problem}"

    @classmethod
    def execute(cls, ckpt_name, variant, weight_dtype, kv_compress, kv_factor, kv_layers) -> io.NodeOutput:
        try:
            kv = kv_setting(kv_compress, kv_factor, kv_layers)
        except ValueError as e:
            raise ValueError(f"PixArt Sigma DiT Loader: {e}") from e
        dtype = torch_dtype(pick(DIT_DTYPES, weight_dtype, "PixArt Sigma DiT Loader weight_dtype"))
        path = find_model(DIT_KINDS, ckpt_name, CheckpointError)
        schedule = pipeline_noise_schedule(path)  # before the weights: a config we cannot reproduce fails fast
        model = load_model(path, variant, dtype, kv)
        if schedule is None or schedule == NoiseSchedule():
            return io.NodeOutput(model)
        log.info("PixArt Sigma DiT Loader: %s samples with its scheduler config's %s", path, schedule)
        return io.NodeOutput(with_noise_schedule(model, schedule))
