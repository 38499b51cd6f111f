"""Build a transformers ``T5EncoderModel`` from one safetensors file or a Hugging Face folder, offline.

Both sources go through one path: build the model on the meta device from the config, match every state-dict entry
to a stored tensor (:mod:`.checkpoint`), then read the tensors one at a time, convert them and move them to the
target device, so host memory peaks at about one tensor above the finished model.

Precision policy:

- ``dtype`` is the compute dtype (bf16 default, fp32, fp16) of activations, embeddings, norms and Linear weights.
- fp16: T5 v1.1 feed-forward outputs overflow fp16 (activations beyond 65504), so the ``wo`` projections keep fp32
  weights and compute, exactly as transformers' ``T5PreTrainedModel._keep_in_fp32_modules = ["wo"]`` does for
  fp16; the residual stream then stays fp32 and the next layer norm casts back to fp16.
- float8: Linear weights stay float8 (:class:`.fp8.Fp8Linear`) when the file stores them so (``weight_dtype=None``)
  or when ``weight_dtype`` is a float8 dtype (quantized at load); they are upcast to the compute dtype per call.
  Embeddings, norms and the attention bias are always kept in the compute dtype.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn
from transformers import T5EncoderModel

from ..config import COMPUTE_DTYPES
from ..errors import T5Error, listing, short
from ..io import check_entry, weights_format
from .checkpoint import KeyPlan, T5Layout, describe_file, describe_folder, plan_keys
from .fp8 import is_float8, replace_linears, to_float8_bits, torch_float8

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class T5Source:
    """What a caller's path points at."""

    path: Path  # as given
    weights: Path  # the single .safetensors file, or the text-encoder folder (config.json + safetensors)
    is_folder: bool
    tokenizer_dirs: tuple[Path, ...]  # where a tokenizer is looked for, in order (none for a single file)


@dataclass(frozen=True)
class Precision:
    """Resolved dtypes of a loaded T5."""

    compute: torch.dtype  # activations, embeddings, norms, and Linear weights unless `storage` is set
    storage: torch.dtype | None  # float8 dtype of the Linear weights, or None when they are in compute dtype

    def linear_dtype(self, module_name: str) -> torch.dtype:
        """Compute dtype of one Linear: fp32 for the feed-forward ``wo`` under fp16 (overflow guard)."""
        if self.compute == torch.float16 and module_name.endswith("DenseReluDense.wo"):
            return torch.float32
        return self.compute


def resolve_source(path: str | os.PathLike[str]) -> T5Source:
    """Classify ``path``: a ``.safetensors``/``.sft`` file, a text-encoder folder, or a diffusers pipeline root."""
    p = Path(path).expanduser()
    if check_entry(p, T5Error, ("file", "folder"), "file or folder") == "file":
        if weights_format(p) != "safetensors":
            raise T5Error(
                f"{p}: expected a .safetensors file (or .sft) or a folder with config.json; "
                f"'{short(p.suffix, 20)}' files are not read (pickled checkpoints can run code)"
            )
        return T5Source(p, p, False, ())
    if (p / "config.json").is_file():
        return T5Source(p, p, True, (p, p / "tokenizer", p.parent / "tokenizer"))
    if (p / "text_encoder" / "config.json").is_file():
        return T5Source(p, p / "text_encoder", True, (p / "tokenizer", p / "text_encoder"))
    found = sorted(child.name for child in p.iterdir())
    raise T5Error(
        f"{p}: expected a T5 text-encoder folder (config.json + model.safetensors or shards) or a diffusers "
        f"pipeline folder holding text_encoder/ and tokenizer/; found {listing(found, 8)}"
    )


def resolve_precision(dtype: torch.dtype, weight_dtype: torch.dtype | None, stored: torch.dtype | None) -> Precision:
    """Check the caller's dtypes and decide the Linear storage.

    Args:
        dtype: compute dtype, one of bf16 / fp16 / fp32.
        weight_dtype: None (keep float8 weights float8, everything else in ``dtype``), a float8 dtype (quantize the
            Linear weights to it), or ``dtype`` itself (dequantize float8 files fully).
        stored: float8 dtype of the stored Linear weights, or None when they are not float8.
    """
    if dtype not in COMPUTE_DTYPES:
        hint = f" For float8 storage pass weight_dtype={dtype} with dtype=torch.bfloat16." if is_float8(dtype) else ""
        raise T5Error(f"dtype={dtype} is not a T5 compute dtype: expected torch.bfloat16, float16 or float32.{hint}")
    if weight_dtype is None:
        return Precision(dtype, stored)
    if is_float8(weight_dtype):
        return Precision(dtype, weight_dtype)
    if weight_dtype == dtype:
        return Precision(dtype, None)
    raise T5Error(
        f"weight_dtype={weight_dtype}: expected None (float8 files stay float8), torch.float8_e4m3fn, "
        f"torch.float8_e5m2 (on a torch that has them) or the compute dtype {dtype}"
    )


def _stored_float8(layout: T5Layout, plan: KeyPlan, linear_names: set[str]) -> torch.dtype | None:
    """Float8 dtype of the stored Linear weights (None if not float8); errors if this torch lacks float8."""
    stored: torch.dtype | None = None
    for model_key, key in plan.keys.items():
        info = layout.tensors[key]
        if info.dtype.startswith("F8_"):
            fp8 = torch_float8(info.dtype, info.file)
            if stored is None and model_key.removesuffix(".weight") in linear_names:
                stored = fp8
    return stored


def _convert(tensor: Tensor, scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Stored tensor (any dtype, optional scaled-fp8 scale) -> ``dtype``."""
    if scale is not None:
        tensor = tensor.to(torch.float32) * scale.to(torch.float32)
    return tensor.to(dtype)


def _read_state(
    layout: T5Layout, plan: KeyPlan, precision: Precision, linear_names: set[str], device: torch.device
) -> dict[str, Tensor]:
    """State dict for the (possibly float8-swapped) meta model, read tensor by tensor and placed on ``device``."""
    state: dict[str, Tensor] = {}
    done: dict[str, Tensor] = {}  # stored key -> converted tensor: the tied embedding is read once
    files = sorted({layout.tensors[key].file for key in [*plan.keys.values(), *plan.scales.values()]})
    with contextlib.ExitStack() as stack:
        handles = {file: stack.enter_context(safe_open(str(file), framework="pt", device="cpu")) for file in files}

        def read(key: str) -> Tensor:
            return handles[layout.tensors[key].file].get_tensor(key)

        for model_key, key in plan.keys.items():
            if key in done:
                state[model_key] = done[key]
                continue
            scale = read(plan.scales[model_key]) if model_key in plan.scales else None
            if scale is not None and scale.numel() != 1:
                raise T5Error(f"{layout.source}: '{plan.scales[model_key]}' has {scale.numel()} values, expected 1")
            module = model_key.removesuffix(".weight")
            if module in linear_names and precision.storage is not None:
                state[model_key] = to_float8_bits(read(key), precision.storage).to(device)
                one = torch.ones((), dtype=torch.float32)
                state[module + ".scale"] = (one if scale is None else scale.to(torch.float32).reshape(())).to(device)
                continue
            dtype = precision.linear_dtype(module) if module in linear_names else precision.compute
            done[key] = state[model_key] = _convert(read(key), scale, dtype).to(device)
    return state


def load_t5_model(
    source: T5Source,
    dtype: torch.dtype = torch.bfloat16,
    weight_dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> tuple[T5EncoderModel, Precision]:
    """Read a T5 encoder in eval mode, gradients off, on ``device``; see the module docstring for the dtypes."""
    start = time.perf_counter()
    layout = describe_folder(source.weights) if source.is_folder else describe_file(source.weights)
    with torch.device("meta"):
        model = T5EncoderModel(layout.config)
    linear_names = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    plan = plan_keys(layout, {key: tuple(value.shape) for key, value in model.state_dict().items()})
    precision = resolve_precision(dtype, weight_dtype, _stored_float8(layout, plan, linear_names))
    if precision.storage is not None:
        replace_linears(model, precision.storage, {n: precision.linear_dtype(n) for n in linear_names}, False)
    state = _read_state(layout, plan, precision, linear_names, torch.device(device))
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    cfg = layout.config
    logger.info(
        "%s: T5 encoder d_model=%d, %d layers, %d heads x %d, d_ff=%d (%s), vocab %d; compute %s, Linear weights %s; "
        "read in %.1f s",
        source.path,
        cfg.d_model,
        cfg.num_layers,
        cfg.num_heads,
        cfg.d_kv,
        cfg.d_ff,
        cfg.feed_forward_proj,
        cfg.vocab_size,
        precision.compute,
        precision.storage or precision.compute,
        time.perf_counter() - start,
    )
    return model, precision
