"""A LoRA as updates of official PixArt parameters: low-rank targets (``LoraTarget``, merged here) and the other
kinds (``LoraPatch``: LoHa, LoKr, OFT, weight and bias differences), checked against a model and merged into it."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..checkpoints.keymap import ModuleTarget
from ..errors import LoraError, short
from .files import MAX_RANK, PeftSettings, read_lora
from .keys import (
    ALPHA,
    DIFF,
    DIFF_B,
    DORA_SCALE,
    DOWN,
    MAGNITUDE,
    UP,
    UP_BIAS,
    canonical_module,
    module_target,
    split_key,
    unsupported_reason,
)
from .patches import WEIGHT_DIFF, LoraPatch, check_alpha, check_dora_scale, make_patch, weight_kind

log = logging.getLogger(__name__)

MAX_LISTED = 6  # problems listed in one error message
LORA_PARTS = {DOWN, UP, UP_BIAS, MAGNITUDE}
_NAMES = {DOWN: "down", UP: "up"}  # how messages call the LoRA halves


@dataclass(frozen=True)
class LoraTarget:
    """One update ``W[rows] += strength * scale * up @ down`` of an official weight.

    ``rows`` is ``chunk`` of ``chunks`` equal row blocks of the weight: q, k, v of ``attn.qkv`` are chunks 0-2 of 3,
    k, v of ``cross_attn.kv_linear`` chunks 0-1 of 2; a whole weight is chunk 0 of 1. For a convolution
    (``x_embedder.proj``, (C, C_in, p, p)) ``in`` is C_in*p*p and the update is reshaped to the kernel.
    With DoRA the updated rows are rescaled: ``magnitude`` (rows,) as PEFT stores it (see ``peft_dora``), or
    ``dora_scale`` as LyCORIS / kohya store it (applied by ComfyUI only).
    """

    key: str  # official weight key, e.g. "blocks.3.attn.qkv.weight"
    chunk: int  # which row block of the weight
    chunks: int  # into how many equal row blocks the weight is split
    down: Tensor  # (r, in), lora_A
    up: Tensor  # (rows, r), lora_B
    scale: float  # alpha / r; 1 when the LoRA gives no alpha
    source: str  # module name as written in the file, for messages
    magnitude: Tensor | None = None  # (rows,), PEFT DoRA's lora_magnitude_vector
    dora_scale: Tensor | None = None  # (rows, 1) or (1, in), LyCORIS / kohya DoRA

    @property
    def rank(self) -> int:
        """r."""
        return self.down.shape[0]

    @property
    def rows(self) -> tuple[int, int]:
        """(start, stop) row range of the update inside the weight."""
        size = self.up.shape[0]
        return self.chunk * size, (self.chunk + 1) * size

    def delta(self, strength: float = 1.0) -> Tensor:
        """``strength * scale * up @ down`` in fp32, (rows, in)."""
        return (self.up.float() @ self.down.float()) * (strength * self.scale)


def peft_dora(weight: Tensor, delta: Tensor, magnitude: Tensor) -> Tensor:
    """PEFT's DoRA weight ``magnitude * (W + delta) / ||W + delta||`` (norm of each output row), fp32.

    Args:
        weight: (rows, ...) the weight rows the update belongs to; delta: the LoRA update of the same shape;
        magnitude: (rows,).
    """
    updated = weight.float() + delta.float().reshape(weight.shape)
    norm = updated.reshape(updated.shape[0], -1).norm(dim=1)
    factor = magnitude.float().to(updated.device) / norm
    return updated * factor.reshape(-1, *[1] * (updated.ndim - 1))


@dataclass(frozen=True)
class Lora:
    """A LoRA normalised to official parameter keys."""

    path: str  # file or folder it was read from, named in every error
    targets: tuple[LoraTarget, ...]
    patches: tuple[LoraPatch, ...] = ()

    @property
    def keys(self) -> list[str]:
        """The official parameter keys the LoRA updates, sorted."""
        return sorted({t.key for t in self.targets} | {p.key for p in self.patches})


def load_lora(path: str | Path) -> Lora:
    """Read and normalise a LoRA file or PEFT folder (see ``files.read_lora`` and ``keys`` for the formats)."""
    raw = read_lora(path)
    return parse_lora(raw.tensors, raw.path, raw.settings)


def parse_lora(tensors: Mapping[str, Tensor], path: str = "<LoRA>", settings: PeftSettings | None = None) -> Lora:
    """Normalise LoRA tensors to targets and patches; raises LoraError listing every key that matches no PixArt
    module or format part, every incomplete or mixed group of parts and every rank mismatch: all or nothing."""
    groups, problems = _group_keys(tensors)
    targets, patches, seen = [], [], {}
    for module, parts in sorted(groups.items()):
        try:
            found = _updates(module, module_target(module), parts, settings)
        except LoraError as e:
            problems.append(f"{short(module)!r} {e}")
            continue
        for update in found:
            spot = (update.key, update.chunk, update.chunks)
            if spot in seen:
                part = f"part {update.chunk + 1} of {update.chunks} of " if update.chunks > 1 else ""
                problems.append(f"{short(module)!r} and {short(seen[spot])!r} both update {part}{short(update.key)}")
                continue
            seen[spot] = module
            (targets if isinstance(update, LoraTarget) else patches).append(update)
    if problems:
        raise LoraError(_listing(f"{path}: {len(problems)} LoRA key problem(s)", problems))
    if not targets and not patches:
        raise LoraError(f"{path}: holds no tensors, so it is not a LoRA")
    log.info("%s: %d LoRA updates of %d parameters", path, len(targets) + len(patches), len(seen))
    return Lora(str(path), tuple(targets), tuple(patches))


def _group_keys(tensors: Mapping[str, Tensor]) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """{canonical module: {part: tensor}} and a problem line for each key that matches nothing."""
    groups: dict[str, dict[str, Tensor]] = {}
    problems = []
    for key, tensor in tensors.items():
        module, part = split_key(key)
        module = canonical_module(module)
        if not part:
            problems.append(f"{short(key)!r}: {unsupported_reason(key)}")
        elif module_target(module) is None:
            problems.append(f"{short(key)!r}: {short(module, 60)!r} is not a PixArt linear layer")
        elif part in groups.get(module, {}):
            problems.append(f"{short(key)!r}: a second {_NAMES.get(part, part)} tensor for {short(module)!r}")
        else:
            groups.setdefault(module, {})[part] = tensor
    return groups, problems


def _updates(
    module: str, target: ModuleTarget, parts: dict[str, Tensor], settings: PeftSettings | None
) -> list[LoraTarget | LoraPatch]:
    """The updates one module's parts make: a LoRA target or another kind of weight update, and a bias update."""
    parts = dict(parts)
    weight, bias = f"{target.module}.weight", f"{target.module}.bias"
    bias_diff = parts.pop(DIFF_B, None)
    if LORA_PARTS & set(parts):
        low_rank = _target(module, target, parts, settings)
        found: list[LoraTarget | LoraPatch] = [low_rank]
        if UP_BIAS in parts:
            if bias_diff is not None:
                raise LoraError("has both lora_B.bias and diff_b: two updates of one bias")
            bias_diff = parts[UP_BIAS] * low_rank.scale
    else:
        kind = weight_kind(parts)
        if not kind and parts:
            raise LoraError(f"has only {sorted(parts)}, no update they belong to")
        found = [make_patch(kind, module, weight, target.chunk, target.chunks, parts)] if kind else []
    if bias_diff is not None:
        found.append(make_patch(WEIGHT_DIFF, module, bias, target.chunk, target.chunks, {DIFF: bias_diff}))
    return found


def _target(module: str, target: ModuleTarget, parts: dict[str, Tensor], settings: PeftSettings | None) -> LoraTarget:
    """One LoraTarget from the down/up(/alpha, DoRA) tensors of ``module``."""
    extra = sorted(set(parts) - LORA_PARTS - {ALPHA, DORA_SCALE})
    if extra:
        raise LoraError(f"mixes LoRA parts with {extra}; one kind of update per module")
    if DOWN not in parts or UP not in parts:
        have = sorted(_NAMES.get(p, p) for p in parts)
        raise LoraError(f"has {have} but needs both lora down (A) and up (B) weights")
    down, up = parts[DOWN], parts[UP]
    if down.ndim < 2 or up.ndim < 2 or any(s != 1 for s in up.shape[2:]) or not down.numel() or not up.numel():
        raise LoraError(
            f"down {short(tuple(down.shape), 60)} / up {short(tuple(up.shape), 60)} are not LoRA matrices "
            "(expected non-empty (r, in) and (rows, r))"
        )
    if up.shape[1] != down.shape[0]:
        raise LoraError(f"down {tuple(down.shape)} has rank {down.shape[0]}, up {tuple(up.shape)} has {up.shape[1]}")
    rank = down.shape[0]
    if rank > MAX_RANK:
        raise LoraError(f"has rank {rank}, expected at most {MAX_RANK}")
    if ALPHA in parts:
        scale = check_alpha(parts[ALPHA]) / rank
    elif settings is not None:
        scale = settings.scale(module, rank)
    else:
        scale = 1.0
    for name, tensor in ((UP_BIAS, parts.get(UP_BIAS)), (MAGNITUDE, parts.get(MAGNITUDE))):
        if tensor is not None and tuple(tensor.shape) != (up.shape[0],):
            raise LoraError(f"{name} is {short(tuple(tensor.shape), 40)}, expected ({up.shape[0]},) as lora_B's rows")
    if MAGNITUDE in parts and DORA_SCALE in parts:
        raise LoraError("has both a PEFT magnitude and a dora_scale: two DoRA rescalings")
    return LoraTarget(
        key=f"{target.module}.weight",
        chunk=target.chunk,
        chunks=target.chunks,
        down=down.reshape(rank, -1),
        up=up.reshape(up.shape[0], rank),
        scale=scale,
        source=module,
        magnitude=parts.get(MAGNITUDE),
        dora_scale=parts.get(DORA_SCALE),
    )


def check_fit(lora: Lora, shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise LoraError unless every update's parameter exists in a model whose parameters have ``shapes`` (official
    keys) and the update's rows, inputs (and DoRA scales) fit that parameter."""
    problems = []
    for t in lora.targets:
        shape = shapes.get(t.key)
        if shape is None:
            problems.append(f"{t.source!r} updates {t.key}, which this model does not have")
            continue
        width = math.prod(shape[1:])
        if shape[0] != t.chunks * t.up.shape[0] or width != t.down.shape[1]:
            part = f" (fused part {t.chunk + 1} of {t.chunks})" if t.chunks > 1 else ""
            problems.append(
                f"{t.source!r}: up {tuple(t.up.shape)} / down {tuple(t.down.shape)}, but {t.key} {tuple(shape)}"
                f"{part} needs up ({shape[0] // t.chunks}, r) / down (r, {width})"
            )
        elif t.dora_scale is not None:
            _check(problems, t.source, check_dora_scale, t.dora_scale, t.up.shape[0], width)
    for p in lora.patches:
        _check(problems, p.source, _check_patch, p, shapes.get(p.key))
    if problems:
        head = f"{lora.path}: does not fit this model ({_describe(shapes)}; the LoRA has {_describe_lora(lora)})"
        raise LoraError(_listing(head, problems))


def _check(problems: list[str], source: str, check, *args) -> None:
    """Run ``check(*args)``; a LoraError becomes a problem line naming ``source``."""
    try:
        check(*args)
    except LoraError as e:
        problems.append(f"{source!r}: {e}")


def _check_patch(p: LoraPatch, shape: Sequence[int] | None) -> None:
    """A LoraPatch against its parameter's shape (None: the model lacks it)."""
    if shape is None:
        raise LoraError(f"updates {p.key}, which this model does not have")
    rows, width = shape[0] // p.chunks, math.prod(shape[1:])
    part = f" (fused part {p.chunk + 1} of {p.chunks})" if p.chunks > 1 else ""
    wanted = (rows, *shape[1:])
    if p.exact is not None and p.exact != wanted:
        raise LoraError(f"a {p.kind} of {p.exact}, but {p.key} {tuple(shape)}{part} needs {wanted}")
    if p.rows != rows or p.width not in (0, width):
        made = f"{p.rows} x {p.width}" if p.width else f"{p.rows} rows"
        raise LoraError(f"a {p.kind} update of {made}, but {p.key} {tuple(shape)}{part} needs {rows} x {width}")
    if DORA_SCALE in p.parts:
        check_dora_scale(p.parts[DORA_SCALE], rows, width)


def _block_count(keys) -> int:
    """1 + the highest block index among official keys."""
    return 1 + max((int(m.group(1)) for k in keys if (m := re.match(r"^blocks\.(\d{1,9})\.", k))), default=-1)


def _describe(shapes: Mapping[str, Sequence[int]]) -> str:
    """'hidden_size 1152, 28 blocks' from a model's weight shapes, for messages."""
    width = shapes.get("t_block.1.weight", shapes.get("final_layer.linear.weight", (0, 0)))[-1]
    blocks = _block_count(shapes)
    return f"hidden_size {width}, {blocks} block{'' if blocks == 1 else 's'}"


def _describe_lora(lora: Lora) -> str:
    """'hidden_size 1152, blocks 0-27' as far as the LoRA shows it, for messages."""
    widths = {t.down.shape[1] for t in lora.targets if re.search(r"\.(attn\.proj|attn\.qkv|mlp\.fc1)\.weight$", t.key)}
    width = f"hidden_size {widths.pop()}, " if len(widths) == 1 else ""
    depth = _block_count(lora.keys)
    return width + (f"blocks 0-{depth - 1}" if depth else "no blocks")


def _listing(head: str, problems: list[str]) -> str:
    """``head`` and up to MAX_LISTED problems, one per line."""
    lines = [head + ":"] + [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def merge_lora(state_dict: Mapping[str, Tensor], lora: Lora | str | Path, strength: float = 1.0) -> dict[str, Tensor]:
    """A new official-keyed state dict with ``lora`` merged at ``strength``; ``state_dict`` is left as it was.

    Merges LoRA updates (PEFT DoRA included: ``W + strength * (peft_dora(W, delta, m) - W)``) and weight / bias
    differences; LoHa, LoKr, OFT, ``set_weight`` and LyCORIS ``dora_scale`` are ComfyUI's to apply (PixArt Sigma
    LoRA Loader) and raise LoraError here. Updates are computed in fp32 and rounded once to each parameter's dtype;
    parameters the LoRA does not touch are shared with ``state_dict``, not copied.
    """
    if not isinstance(lora, Lora):
        lora = load_lora(lora)
    unmergeable = [(t.source, "LyCORIS DoRA (dora_scale)") for t in lora.targets if t.dora_scale is not None]
    unmergeable += [(p.source, p.kind) for p in lora.patches if p.kind != WEIGHT_DIFF]
    if unmergeable:
        source, kind = unmergeable[0]
        raise LoraError(
            f"{lora.path}: pixart.lora.merge_lora cannot merge {kind} ({short(source)!r} and "
            f"{len(unmergeable) - 1} more); apply it in ComfyUI with PixArt Sigma LoRA Loader"
        )
    check_fit(lora, {k: v.shape for k, v in state_dict.items()})
    merged = dict(state_dict)
    if strength == 0:
        return merged
    updated: dict[str, Tensor] = {}
    for t in lora.targets:
        weight = updated.setdefault(t.key, state_dict[t.key].float().clone())  # fp32 until all updates are in
        start, stop = t.rows
        rows = weight[start:stop]
        if t.magnitude is None:
            rows += t.delta(strength).to(rows.device).reshape(rows.shape)
        else:
            rows += strength * (peft_dora(rows, t.delta().to(rows.device), t.magnitude) - rows)
    for p in lora.patches:
        parameter = updated.setdefault(p.key, state_dict[p.key].float().clone())
        start, stop = p.span
        parameter[start:stop] += strength * p.parts[DIFF].float().to(parameter.device)
    for key, weight in updated.items():
        merged[key] = weight.to(state_dict[key].dtype)
    return merged
