"""A LoRA as a list of low-rank updates of official PixArt weights, checked against a model and merged into it."""

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
from .keys import ALPHA, DOWN, UP, canonical_module, module_target, split_key, unsupported_reason

log = logging.getLogger(__name__)

MAX_LISTED = 6  # problems listed in one error message


@dataclass(frozen=True)
class LoraTarget:
    """One update ``W[rows] += strength * scale * up @ down`` of an official weight.

    ``rows`` is ``chunk`` of ``chunks`` equal row blocks of the weight: q, k, v of ``attn.qkv`` are chunks 0-2 of 3,
    k, v of ``cross_attn.kv_linear`` chunks 0-1 of 2; a whole weight is chunk 0 of 1. For a convolution
    (``x_embedder.proj``, (C, C_in, p, p)) ``in`` is C_in*p*p and the update is reshaped to the kernel.
    """

    key: str  # official weight key, e.g. "blocks.3.attn.qkv.weight"
    chunk: int  # which row block of the weight
    chunks: int  # into how many equal row blocks the weight is split
    down: Tensor  # (r, in), lora_A
    up: Tensor  # (rows, r), lora_B
    scale: float  # alpha / r; 1 when the LoRA gives no alpha
    source: str  # module name as written in the file, for messages

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


@dataclass(frozen=True)
class Lora:
    """A LoRA normalised to official weight keys."""

    path: str  # file or folder it was read from, named in every error
    targets: tuple[LoraTarget, ...]

    @property
    def keys(self) -> list[str]:
        """The official weight keys the LoRA updates, sorted."""
        return sorted({t.key for t in self.targets})


def load_lora(path: str | Path) -> Lora:
    """Read and normalise a LoRA file or PEFT folder (see ``files.read_lora`` and ``keys`` for the formats)."""
    raw = read_lora(path)
    return parse_lora(raw.tensors, raw.path, raw.settings)


def parse_lora(tensors: Mapping[str, Tensor], path: str = "<LoRA>", settings: PeftSettings | None = None) -> Lora:
    """Normalise LoRA tensors to targets; raises LoraError listing every key that matches no PixArt module,
    every incomplete down/up pair and every rank mismatch."""
    groups, problems = _group_keys(tensors)
    targets, seen = [], {}
    for module, parts in sorted(groups.items()):
        target = module_target(module)
        if DOWN not in parts or UP not in parts:
            have = sorted(parts)
            problems.append(f"{short(module)!r} has {have} but needs both lora down (A) and up (B) weights")
            continue
        spot = (target.module, target.chunk, target.chunks)
        if spot in seen:
            part = f"part {target.chunk + 1} of {target.chunks} of " if target.chunks > 1 else ""
            problems.append(f"{short(module)!r} and {short(seen[spot])!r} both update {part}{short(target.module)}")
            continue
        seen[spot] = module
        try:
            targets.append(_target(module, target, parts, settings))
        except LoraError as e:
            problems.append(str(e))
    if problems:
        raise LoraError(_listing(f"{path}: {len(problems)} LoRA key problem(s)", problems))
    if not targets:
        raise LoraError(f"{path}: holds no tensors, so it is not a LoRA")
    log.info("%s: %d LoRA updates of %d weights", path, len(targets), len({t.key for t in targets}))
    return Lora(str(path), tuple(targets))


def _group_keys(tensors: Mapping[str, Tensor]) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """{canonical module: {role: tensor}} and a problem line for each key that matches nothing."""
    groups: dict[str, dict[str, Tensor]] = {}
    problems = []
    for key, tensor in tensors.items():
        module, role = split_key(key)
        module = canonical_module(module)
        if not role:
            problems.append(f"{short(key)!r}: {unsupported_reason(key)}")
        elif module_target(module) is None:
            problems.append(f"{short(key)!r}: {short(module, 60)!r} is not a PixArt linear layer")
        elif role in groups.get(module, {}):
            problems.append(f"{short(key)!r}: a second {role} tensor for {short(module)!r}")
        else:
            groups.setdefault(module, {})[role] = tensor
    return groups, problems


def _target(module: str, target: ModuleTarget, parts: dict[str, Tensor], settings: PeftSettings | None) -> LoraTarget:
    """One LoraTarget from the down/up(/alpha) tensors of ``module``."""
    down, up = parts[DOWN], parts[UP]
    name = short(module)
    if down.ndim < 2 or up.ndim < 2 or any(s != 1 for s in up.shape[2:]) or not down.numel() or not up.numel():
        raise LoraError(
            f"{name!r}: down {short(tuple(down.shape), 60)} / up {short(tuple(up.shape), 60)} are not LoRA matrices "
            "(expected non-empty (r, in) and (rows, r))"
        )
    if up.shape[1] != down.shape[0]:
        raise LoraError(
            f"{name!r}: down {tuple(down.shape)} has rank {down.shape[0]}, up {tuple(up.shape)} has {up.shape[1]}"
        )
    rank = down.shape[0]
    if rank > MAX_RANK:
        raise LoraError(f"{name!r}: rank {rank}, expected at most {MAX_RANK}")
    if ALPHA in parts:
        alpha = parts[ALPHA]
        if alpha.numel() != 1 or alpha.dtype.is_complex or not math.isfinite(float(alpha.float().reshape(()))):
            raise LoraError(
                f"{name!r}: alpha is {short(tuple(alpha.shape), 40)} {alpha.dtype}, expected one finite number"
            )
        scale = float(alpha.float().reshape(())) / rank
    elif settings is not None:
        scale = settings.scale(module, rank)
    else:
        scale = 1.0
    return LoraTarget(
        key=f"{target.module}.weight",
        chunk=target.chunk,
        chunks=target.chunks,
        down=down.reshape(rank, -1),
        up=up.reshape(up.shape[0], rank),
        scale=scale,
        source=module,
    )


def check_fit(lora: Lora, shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise LoraError unless every target exists in a model whose weights have ``shapes`` (official keys) and
    its down/up shapes fit the weight's rows and input width."""
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
    if problems:
        head = f"{lora.path}: does not fit this model ({_describe(shapes)}; the LoRA has {_describe_lora(lora)})"
        raise LoraError(_listing(head, problems))


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

    Updates are computed in fp32 and rounded once to each weight's dtype. Weights the LoRA does not touch are
    shared with ``state_dict``, not copied.
    """
    if not isinstance(lora, Lora):
        lora = load_lora(lora)
    check_fit(lora, {k: v.shape for k, v in state_dict.items()})
    merged = dict(state_dict)
    if strength == 0:
        return merged
    updated: dict[str, Tensor] = {}
    for t in lora.targets:
        weight = updated.setdefault(t.key, state_dict[t.key].float().clone())  # fp32 until all updates are in
        start, stop = t.rows
        rows = weight[start:stop]
        rows += t.delta(strength).to(rows.device).reshape(rows.shape)
    for key, weight in updated.items():
        merged[key] = weight.to(state_dict[key].dtype)
    return merged
