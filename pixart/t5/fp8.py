"""Float8 weight storage for T5 Linear layers: weights kept in 8 bits, upcast to the compute dtype on every call.

Halves the memory of bf16 weights (T5 v1.1 XXL encoder: 4.63e9 Linear weights, 4.6 GB instead of 9.3 GB) at the
cost of one upcast per layer and call. Matmuls still run in bf16/fp16/fp32, so no float8 kernels are needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import T5Error

# safetensors dtype name -> torch attribute
_FLOAT8_NAMES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def float8_dtypes() -> dict[str, torch.dtype]:
    """The float8 dtypes this torch build has, keyed by safetensors dtype name ("F8_E4M3", "F8_E5M2")."""
    return {st: getattr(torch, name) for st, name in _FLOAT8_NAMES.items() if hasattr(torch, name)}


def is_float8(dtype: torch.dtype) -> bool:
    """True for ``torch.float8_e4m3fn`` / ``torch.float8_e5m2`` (on a torch that has them)."""
    return dtype in float8_dtypes().values()


def torch_float8(safetensors_dtype: str, where: object) -> torch.dtype:
    """The torch dtype for a safetensors float8 name, or a T5Error saying this torch cannot hold it.

    Args:
        safetensors_dtype: "F8_E4M3" or "F8_E5M2".
        where: the file that stores such tensors, named in the error.
    """
    dtype = float8_dtypes().get(safetensors_dtype)
    if dtype is None:
        raise T5Error(
            f"{where}: weights are stored as {safetensors_dtype} (float8) but torch {torch.__version__} has no "
            f"torch.{_FLOAT8_NAMES.get(safetensors_dtype, safetensors_dtype)}. Float8 needs torch >= 2.1: update "
            "torch, or use a bf16/fp16 file such as t5xxl_fp16.safetensors."
        )
    return dtype


def to_float8_bits(weight: Tensor, fp8_dtype: torch.dtype) -> Tensor:
    """``weight`` rounded to ``fp8_dtype`` and reinterpreted as int8 (same shape); out-of-range values saturate."""
    if weight.dtype != fp8_dtype:
        weight = weight.to(torch.float32).to(fp8_dtype)
    return weight.view(torch.int8)


class Fp8Linear(nn.Module):
    """Bias-free Linear whose weight is stored as float8 and upcast to ``compute_dtype`` in ``forward``.

    The float8 bits live in an int8 buffer named ``weight`` (shape ``(out, in)``), for two reasons:
    ``Module.to(dtype)``/``.half()`` never cast integer buffers, so the weights cannot be silently dequantized; and
    transformers' T5 feed-forward casts its input to ``wo.weight.dtype`` unless that dtype is int8, which with a
    float8 dtype would round the activations to 8 bits. ``scale`` is a per-tensor factor (ComfyUI "scaled fp8"
    files; 1 otherwise) applied to the output: ``y = (x @ W^T) * scale``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fp8_dtype: torch.dtype,
        compute_dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.fp8_dtype = fp8_dtype
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones((), dtype=torch.float32, device=device))

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (..., in). Returns: (..., out) in ``compute_dtype``."""
        weight = self.weight.view(self.fp8_dtype).to(self.compute_dtype)  # (out, in)
        return F.linear(x.to(self.compute_dtype), weight) * self.scale.to(self.compute_dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, storage={self.fp8_dtype}, compute={self.compute_dtype}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, fp8_dtype: torch.dtype, compute_dtype: torch.dtype) -> Fp8Linear:
        """Quantize an existing bias-free ``nn.Linear`` (scale 1)."""
        if linear.bias is not None:
            raise ValueError("Fp8Linear holds bias-free layers only (T5 has no Linear biases)")
        layer = cls(linear.in_features, linear.out_features, fp8_dtype, compute_dtype, device=linear.weight.device)
        layer.weight = to_float8_bits(linear.weight.detach(), fp8_dtype)
        return layer


def replace_linears(
    model: nn.Module, fp8_dtype: torch.dtype, compute_dtype_of: dict[str, torch.dtype], quantize: bool
) -> None:
    """Swap every ``nn.Linear`` of ``model`` for an :class:`Fp8Linear`, in place.

    Args:
        compute_dtype_of: module name -> compute dtype; every Linear must be listed.
        quantize: round the existing weights to float8 (True), or build empty layers on the Linear's device, e.g. on
            the meta device before ``load_state_dict(assign=True)`` (False).
    """
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, linear in linears:
        compute = compute_dtype_of[name]
        if quantize:
            layer = Fp8Linear.from_linear(linear, fp8_dtype, compute)
        else:
            layer = Fp8Linear(linear.in_features, linear.out_features, fp8_dtype, compute, device=linear.weight.device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
