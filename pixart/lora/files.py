"""Reading LoRA weights from disk: a safetensors or torch file, or a PEFT adapter folder.

Besides the tensors, a LoRA may carry PEFT scaling settings (``r``, ``lora_alpha``, ``rank_pattern``,
``alpha_pattern``, ``use_rslora``): in ``adapter_config.json`` of a PEFT folder, or as the JSON string
``lora_adapter_metadata`` in the safetensors header that diffusers' ``save_lora_weights`` writes since 0.34.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..errors import LoraError, listing, short
from ..io import (
    SAFETENSORS_SUFFIXES,
    TORCH_SUFFIXES,
    check_entry,
    json_field,
    parse_json,
    read_json,
    read_safetensors,
    read_torch,
    weights_format,
)

log = logging.getLogger(__name__)

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
METADATA_KEY = "lora_adapter_metadata"
MAX_RANK = 65536  # a LoRA rank or rank_pattern value (full rank of the widest PixArt weight: 4608)
MAX_PATTERNS = 10_000  # entries of rank_pattern / alpha_pattern
# What PEFT writes as a rank_pattern / alpha_pattern key: a module name, or its last dotted components.
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100}){0,30}")


@dataclass(frozen=True)
class PeftSettings:
    """Scaling of a PEFT ``LoraConfig``: each module's update is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA)
    times ``lora_B @ lora_A``; ``rank_pattern``/``alpha_pattern`` override ``r``/``lora_alpha`` per module."""

    lora_alpha: float
    r: int | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    source: str = ""  # where the settings were read, for messages

    @classmethod
    def from_dict(cls, config: dict, source: str) -> PeftSettings:
        """Settings from a ``LoraConfig`` dict; raises LoraError on adapters this loader cannot apply."""
        peft_type = config.get("peft_type") or "LORA"
        peft_type = getattr(peft_type, "value", peft_type)  # a str or PEFT's PeftType enum
        if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
            raise LoraError(
                f"{source}: PEFT type {short(repr(peft_type), 40)} is not supported, only LoRA (with DoRA or biases)"
            )
        json_field(config, "use_dora", bool, source, LoraError, False)  # DoRA: the weights carry the magnitudes
        if "lora_alpha" not in config and "r" not in config:
            raise LoraError(f"{source}: neither 'r' nor 'lora_alpha' is set; is this a PEFT LoRA config?")
        return cls(
            lora_alpha=json_field(config, "lora_alpha", float, source, LoraError, 8.0),  # PEFT's default
            r=json_field(config, "r", int, source, LoraError, None, (1, MAX_RANK)),
            rank_pattern=_patterns(config, "rank_pattern", int, source, (1, MAX_RANK)),
            alpha_pattern=_patterns(config, "alpha_pattern", float, source, None),
            use_rslora=json_field(config, "use_rslora", bool, source, LoraError, False),
            source=source,
        )

    def scale(self, module: str, rank: int) -> float:
        """``alpha / r`` for ``module`` (its name inside the base model, e.g. ``transformer_blocks.0.attn1.to_q``)
        whose weights have rank ``rank``; raises LoraError when the config's rank for it disagrees."""
        r = _pattern_value(self.rank_pattern, module, self.r)
        if r is not None and r != rank:
            raise LoraError(f"{self.source}: says r={r} for {short(module)!r} but its lora_A/lora_B have rank {rank}")
        alpha = _pattern_value(self.alpha_pattern, module, self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def _patterns(config: dict, key: str, kind: type, source: str, limits: tuple[int, int] | None) -> dict:
    """``rank_pattern``/``alpha_pattern`` as PEFT writes them: {module name or its last dotted components: value}.

    Keys are names, never regular expressions: one that is not a dotted name is refused rather than compiled.
    """
    patterns = json_field(config, key, dict, source, LoraError, {})
    if len(patterns) > MAX_PATTERNS:
        raise LoraError(f"{source}: {key} has {len(patterns)} entries, more than {MAX_PATTERNS}")
    for name in patterns:
        if not _MODULE_NAME.fullmatch(name):
            raise LoraError(
                f"{source}: {key} key {short(name, 60)!r} is not a module name (dotted letters, digits and _); "
                "regular-expression patterns are not supported"
            )
    return {name: json_field(patterns, name, kind, f"{source} ({key})", LoraError, None, limits) for name in patterns}


def _pattern_value(patterns: dict, module: str, default):
    """The value of the first pattern that is ``module`` or its last whole dotted components (how PEFT matches
    ``rank_pattern``/``alpha_pattern`` names); ``default`` when none is."""
    for pattern, value in patterns.items():
        if module == pattern or module.endswith("." + pattern):
            return value
    return default


@dataclass(frozen=True)
class RawLora:
    """The tensors of a LoRA as stored, with the scaling settings that came with them."""

    path: str
    tensors: dict[str, Tensor]
    settings: PeftSettings | None = None


def read_lora(path: str | Path) -> RawLora:
    """Read a LoRA file (``.safetensors``, or ``.bin``/``.pt``/``.pth``/``.ckpt`` through ``torch.load`` with
    ``weights_only=True``) or a PEFT adapter folder (``adapter_model.safetensors|bin`` + ``adapter_config.json``)."""
    path = Path(path)
    if check_entry(path, LoraError, ("file", "folder"), "LoRA file or folder") == "folder":
        return _read_peft_folder(path)
    tensors, metadata = _read_tensors(path)
    settings = _settings_from_metadata(metadata, path) or _sibling_settings(path)
    return RawLora(str(path), tensors, settings)


def _read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and (safetensors only) header metadata of one file."""
    kind = weights_format(path)
    if kind == "safetensors":
        return read_safetensors(path, LoraError)
    if kind == "torch":
        return read_torch(path, LoraError), {}
    raise LoraError(
        f"{path}: unknown LoRA file type {short(path.suffix, 20)!r}; expected one of "
        f"{SAFETENSORS_SUFFIXES + TORCH_SUFFIXES}"
    )


def _read_peft_folder(folder: Path) -> RawLora:
    """A PEFT adapter folder as written by ``PeftModel.save_pretrained``."""
    weights = next((folder / name for name in PEFT_WEIGHTS if (folder / name).is_file()), None)
    config = folder / PEFT_CONFIG
    if weights is None or not config.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise LoraError(
            f"{folder}: not a PEFT adapter folder: need {PEFT_CONFIG} and one of {PEFT_WEIGHTS}, "
            f"found {listing(found, 8)}"
        )
    tensors, _ = _read_tensors(weights)
    return RawLora(str(folder), tensors, _read_config(config))


def _read_config(config: Path) -> PeftSettings:
    """Settings from an ``adapter_config.json``."""
    return PeftSettings.from_dict(read_json(config, LoraError), str(config))


def _settings_from_metadata(metadata: dict[str, str], path: Path) -> PeftSettings | None:
    """Settings from diffusers' ``lora_adapter_metadata`` header entry, whose keys carry the component prefix
    (``transformer.r``, ``transformer.lora_alpha``, ...); None when absent."""
    text = metadata.get(METADATA_KEY)
    if not text:
        return None
    packed = parse_json(text, f"{path} ({METADATA_KEY})", LoraError)
    groups: dict[str, dict] = {}
    for key, value in packed.items():
        prefix, _, name = key.partition(".") if "." in key else ("", "", key)
        groups.setdefault(prefix, {})[name] = value
    components = [p for p in groups if p in ("", "transformer", "unet")]
    if len(components) != 1:
        raise LoraError(
            f"{path}: {METADATA_KEY!r} holds settings for {listing(sorted(groups), 4)}; expected one transformer"
        )
    return PeftSettings.from_dict(groups[components[0]], f"{path} ({METADATA_KEY})")


def _sibling_settings(path: Path) -> PeftSettings | None:
    """The official PixArt LoRA script (``train_pixart_lora_hf.py``) saves ``save_lora_weights`` output, which has
    no alpha, beside a PEFT adapter of the same weights (``checkpoint-N/``), or in ``transformer_lora/`` under it.
    Use that adapter's config when ``path`` sits in such a place; None otherwise."""
    folders = [path.parent] + ([path.parent.parent] if path.parent.name == "transformer_lora" else [])
    for folder in folders:
        if (folder / PEFT_CONFIG).is_file() and any((folder / name).is_file() for name in PEFT_WEIGHTS):
            log.info("%s: using the scaling settings of the PEFT adapter in %s", path, folder)
            return _read_config(folder / PEFT_CONFIG)
    return None
