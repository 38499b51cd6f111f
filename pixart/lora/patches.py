"""LyCORIS and weight-difference updates of a LoRA file (LoHa, LoKr, OFT, ``diff``, ``diff_b``, ``set_weight``).

Each is kept under the part names ComfyUI's weight adapters read (comfy/weight_adapter/{loha,lokr,oft}.py, and
comfy/lora.py for ``alpha``, ``dora_scale``, ``diff``, ``diff_b``, ``set_weight``), checked for completeness and
for the shape it produces, so that ComfyUI gets only updates it applies in full. The arithmetic is ComfyUI's:
``pixart.lora.merge_lora`` merges only the weight and bias differences of this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..errors import LoraError, short
from .keys import ALPHA, DIFF, DORA_SCALE, LOHA_PARTS, LOKR_PARTS, OFT_BLOCKS, SET_WEIGHT

LOHA, LOKR, OFT, WEIGHT_DIFF, SET = "LoHa", "LoKr", "OFT", "diff", "set_weight"


@dataclass(frozen=True)
class LoraPatch:
    """One update of an official parameter (weight or bias) other than a plain LoRA, in ComfyUI's part names.

    ``rows`` x ``width`` is what the update produces: the rows of its chunk (``chunk`` of ``chunks`` equal row
    blocks, as in ``LoraTarget``) and the weight's inputs per row (C_in*p*p for the patch-embedding conv, 1 for a
    bias); ``exact`` is the full shape a difference must have (ComfyUI skips a difference of another shape).
    """

    key: str  # official parameter key: "blocks.3.attn.qkv.weight", "blocks.3.attn.qkv.bias"
    chunk: int
    chunks: int
    kind: str  # LOHA, LOKR, OFT, WEIGHT_DIFF or SET
    parts: Mapping[str, Tensor]  # by ComfyUI part name: hada_w1_a.., lokr_w1.., oft_blocks, alpha, dora_scale, diff
    rows: int
    width: int
    exact: tuple[int, ...] | None  # required shape of a diff / set_weight; None for adapters
    source: str  # module name as written in the file, for messages

    @property
    def span(self) -> tuple[int, int]:
        """(start, stop) row range of the update inside the parameter."""
        return self.chunk * self.rows, (self.chunk + 1) * self.rows


def weight_kind(parts: Mapping[str, Tensor]) -> str:
    """LOHA, LOKR, OFT, WEIGHT_DIFF or SET from the parts present; ``""`` when none of theirs is."""
    kinds = [
        kind
        for kind, names in ((LOHA, LOHA_PARTS), (LOKR, LOKR_PARTS), (OFT, (OFT_BLOCKS,)), (WEIGHT_DIFF, (DIFF,)))
        if any(name in parts for name in names)
    ]
    kinds += [SET] if SET_WEIGHT in parts else []
    if len(kinds) > 1:
        raise LoraError(f"mixes the parts of {' and '.join(kinds)}; one kind of update per module")
    return kinds[0] if kinds else ""


def make_patch(kind: str, module: str, key: str, chunk: int, chunks: int, parts: dict[str, Tensor]) -> LoraPatch:
    """The checked LoraPatch of ``kind`` for ``module`` from its parts; LoraError naming what is missing or wrong."""
    alpha = parts.get(ALPHA)
    if alpha is not None:
        check_alpha(alpha)
    if kind in (WEIGHT_DIFF, SET):
        tensor = parts[DIFF if kind == WEIGHT_DIFF else SET_WEIGHT]
        _only(parts, {DIFF, SET_WEIGHT}, kind)
        if not tensor.numel() or tensor.dtype.is_complex or not tensor.dtype.is_floating_point:
            raise LoraError(f"{kind} is {short(tuple(tensor.shape), 40)} {tensor.dtype}, expected non-empty floats")
        rows, width = tensor.shape[0], math.prod(tensor.shape[1:])
        return LoraPatch(key, chunk, chunks, kind, parts, rows, width, tuple(tensor.shape), module)
    rows, width = {LOHA: _loha_shape, LOKR: _lokr_shape, OFT: _oft_shape}[kind](parts)
    return LoraPatch(key, chunk, chunks, kind, parts, rows, width, None, module)


def check_alpha(alpha: Tensor) -> float:
    """The value of an ``alpha`` tensor: one finite number."""
    if alpha.numel() != 1 or alpha.dtype.is_complex or not math.isfinite(float(alpha.float().reshape(()))):
        raise LoraError(f"alpha is {short(tuple(alpha.shape), 40)} {alpha.dtype}, expected one finite number")
    return float(alpha.float().reshape(()))


def check_dora_scale(scale: Tensor, rows: int, width: int) -> None:
    """A DoRA ``dora_scale`` as ComfyUI applies it to an update of ``rows`` x ``width``: one magnitude per output
    row ((rows, 1), divided by the row norms of the weight before the update) or per input ((1, in), divided by the
    column norms of the updated weight)."""
    per_row = scale.shape[0] == rows and scale.numel() == rows
    per_input = scale.ndim >= 2 and scale.shape[0] == 1 and scale.numel() == width
    if not (per_row or per_input):
        raise LoraError(
            f"dora_scale is {short(tuple(scale.shape), 40)}, expected ({rows}, 1) or (1, {width}) for an update of "
            f"{rows} x {width}"
        )


def _only(parts: Mapping[str, Tensor], allowed: set[str], kind: str) -> None:
    extra = sorted(set(parts) - allowed - {ALPHA, DORA_SCALE})
    if extra or (kind in (WEIGHT_DIFF, SET) and (ALPHA in parts or DORA_SCALE in parts)):
        found = extra or sorted({ALPHA, DORA_SCALE} & set(parts))
        raise LoraError(f"a {kind} update with {found}, which do not belong to it")


def _matrix(parts: Mapping[str, Tensor], name: str) -> Tensor:
    tensor = parts[name]
    if tensor.ndim != 2 or not tensor.numel():
        raise LoraError(f"{name} is {short(tuple(tensor.shape), 40)}, expected a non-empty matrix")
    return tensor


def _need(parts: Mapping[str, Tensor], names: tuple[str, ...], kind: str) -> None:
    missing = [name for name in names if name not in parts]
    if missing:
        raise LoraError(f"is a {kind} update that lacks {missing} (has {sorted(parts)})")


def _loha_shape(parts: Mapping[str, Tensor]) -> tuple[int, int]:
    """LoHa: (w1_a @ w1_b) * (w2_a @ w2_b), each (rows, r) @ (r, in)."""
    _need(parts, LOHA_PARTS, LOHA)
    _only(parts, set(LOHA_PARTS), LOHA)
    w1a, w1b, w2a, w2b = (_matrix(parts, name) for name in LOHA_PARTS)
    if w1a.shape[1] != w1b.shape[0] or w2a.shape[1] != w2b.shape[0]:
        raise LoraError(f"LoHa ranks disagree: {_shapes(parts, LOHA_PARTS)}")
    if w1a.shape[0] != w2a.shape[0] or w1b.shape[1] != w2b.shape[1]:
        raise LoraError(f"LoHa products differ in shape: {_shapes(parts, LOHA_PARTS)}")
    return w1a.shape[0], w1b.shape[1]


def _lokr_factor(parts: Mapping[str, Tensor], full: str, a: str, b: str) -> tuple[int, ...]:
    """Shape of one Kronecker factor: ``full`` as stored, or ``a @ b``."""
    if full in parts:
        if a in parts or b in parts:
            raise LoraError(f"LoKr has both {full} and its factors {a} / {b}")
        tensor = parts[full]
        if tensor.ndim not in (2, 4) or not tensor.numel():
            raise LoraError(f"{full} is {short(tuple(tensor.shape), 40)}, expected a non-empty matrix")
        return tuple(tensor.shape)
    _need(parts, (a, b), LOKR)
    left, right = _matrix(parts, a), _matrix(parts, b)
    if left.shape[1] != right.shape[0]:
        raise LoraError(f"LoKr {a} {tuple(left.shape)} and {b} {tuple(right.shape)} have different ranks")
    return left.shape[0], right.shape[1]


def _lokr_shape(parts: Mapping[str, Tensor]) -> tuple[int, int]:
    """LoKr: kron(w1, w2), w1 (a, b) and w2 (c, d) each stored whole or as two factors -> (a*c, b*d)."""
    _only(parts, set(LOKR_PARTS), LOKR)
    w1 = _lokr_factor(parts, "lokr_w1", "lokr_w1_a", "lokr_w1_b")
    w2 = _lokr_factor(parts, "lokr_w2", "lokr_w2_a", "lokr_w2_b")
    if len(w1) != 2:
        raise LoraError(f"lokr_w1 is {w1}, expected a matrix")
    return w1[0] * w2[0], w1[1] * math.prod(w2[1:])


def _oft_shape(parts: Mapping[str, Tensor]) -> tuple[int, int]:
    """OFT: block-diagonal rotation of the output rows, ``oft_blocks`` (blocks, size, size); any input width."""
    _only(parts, {OFT_BLOCKS}, OFT)
    blocks = parts[OFT_BLOCKS]
    if blocks.ndim != 3 or blocks.shape[1] != blocks.shape[2] or not blocks.numel():
        what = "a BOFT file (not supported)" if blocks.ndim == 4 else "not (blocks, size, size)"
        raise LoraError(f"oft_blocks is {short(tuple(blocks.shape), 40)}: {what}")
    return blocks.shape[0] * blocks.shape[1], 0  # width 0: fits any input width


def _shapes(parts: Mapping[str, Tensor], names) -> str:
    return ", ".join(f"{name} {tuple(parts[name].shape)}" for name in names)
