"""Reading LoRA weights from disk: a safetensors or torch file, or a PEFT adapter folder.

Besides the tensors, a LoRA may carry PEFT scaling settings (``r``, ``lora_alpha``, ``rank_pattern``,
``alpha_pattern``, ``use_rslora``): in ``adapter_config.json`` of a PEFT folder, or as the JSON string
``lora_adapter_metadata`` in the safetensors header that diffusers' ``save_lora_weights`` writes since 0.34.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from .errors import LoraError

log = logging.getLogger(__name__)

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
METADATA_KEY = "lora_adapter_metadata"


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
        peft_type = str(getattr(peft_type, "value", peft_type)).upper()  # a str or PEFT's PeftType enum
        if peft_type != "LORA":
            raise LoraError(f"{source}: PEFT type {peft_type!r} is not supported, only plain LoRA")
        if config.get("use_dora"):
            raise LoraError(f"{source}: DoRA adapters (use_dora=true) are not supported, only plain LoRA")
        if "lora_alpha" not in config and "r" not in config:
            raise LoraError(f"{source}: neither 'r' nor 'lora_alpha' is set; is this a PEFT LoRA config?")
        r = config.get("r")
        return cls(
            lora_alpha=float(config.get("lora_alpha", 8)),  # PEFT's default
            r=int(r) if r is not None else None,
            rank_pattern={str(k): int(v) for k, v in (config.get("rank_pattern") or {}).items()},
            alpha_pattern={str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()},
            use_rslora=bool(config.get("use_rslora", False)),
            source=source,
        )

    def scale(self, module: str, rank: int) -> float:
        """``alpha / r`` for ``module`` (its name inside the base model, e.g. ``transformer_blocks.0.attn1.to_q``)
        whose weights have rank ``rank``; raises LoraError when the config's rank for it disagrees."""
        r = _pattern_value(self.rank_pattern, module, self.r)
        if r is not None and r != rank:
            raise LoraError(f"{self.source}: says r={r} for {module!r} but its lora_A/lora_B have rank {rank}")
        alpha = _pattern_value(self.alpha_pattern, module, self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def _pattern_value(patterns: dict, module: str, default):
    """The value of the first pattern that matches the end of ``module`` (whole dotted components or a regex),
    as PEFT matches ``rank_pattern``/``alpha_pattern``; ``default`` when none does."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
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
    if path.is_dir():
        return _read_peft_folder(path)
    if not path.is_file():
        raise LoraError(f"{path}: no such LoRA file or folder")
    tensors, metadata = _read_tensors(path)
    settings = _settings_from_metadata(metadata, path) or _sibling_settings(path)
    return RawLora(str(path), tensors, settings)


def _read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and (safetensors only) header metadata of one file."""
    if path.suffix in SAFETENSORS_SUFFIXES:
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return safetensors.torch.load_file(str(path)), metadata
        except (safetensors.SafetensorError, OSError) as e:
            raise LoraError(f"{path}: cannot read as safetensors: {e}") from e
    if path.suffix in TORCH_SUFFIXES:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError) as e:
            raise LoraError(f"{path}: cannot read as a torch file (weights_only=True): {e}") from e
        if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
            raise LoraError(f"{path}: expected a flat dict of tensors, found {type(data).__name__}")
        return data, {}
    raise LoraError(
        f"{path}: unknown LoRA file type {path.suffix!r}; expected one of {SAFETENSORS_SUFFIXES + TORCH_SUFFIXES}"
    )


def _read_peft_folder(folder: Path) -> RawLora:
    """A PEFT adapter folder as written by ``PeftModel.save_pretrained``."""
    weights = next((folder / name for name in PEFT_WEIGHTS if (folder / name).is_file()), None)
    config = folder / PEFT_CONFIG
    if weights is None or not config.is_file():
        found = sorted(p.name for p in folder.iterdir())[:20]
        raise LoraError(
            f"{folder}: not a PEFT adapter folder: need {PEFT_CONFIG} and one of {PEFT_WEIGHTS}, found {found}"
        )
    tensors, _ = _read_tensors(weights)
    return RawLora(str(folder), tensors, _read_config(config))


def _read_config(config: Path) -> PeftSettings:
    """Settings from an ``adapter_config.json``."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoraError(f"{config}: cannot read the PEFT config: {e}") from e
    if not isinstance(data, dict):
        raise LoraError(f"{config}: expected a JSON object, found {type(data).__name__}")
    return PeftSettings.from_dict(data, str(config))


def _settings_from_metadata(metadata: dict[str, str], path: Path) -> PeftSettings | None:
    """Settings from diffusers' ``lora_adapter_metadata`` header entry, whose keys carry the component prefix
    (``transformer.r``, ``transformer.lora_alpha``, ...); None when absent."""
    text = metadata.get(METADATA_KEY)
    if not text:
        return None
    try:
        packed = json.loads(text)
    except json.JSONDecodeError as e:
        raise LoraError(f"{path}: the {METADATA_KEY!r} header entry is not JSON: {e}") from e
    groups: dict[str, dict] = {}
    for key, value in packed.items():
        prefix, _, name = key.partition(".") if "." in key else ("", "", key)
        groups.setdefault(prefix, {})[name] = value
    components = [p for p in groups if p in ("", "transformer", "unet")]
    if len(components) != 1:
        raise LoraError(f"{path}: {METADATA_KEY!r} holds settings for {sorted(groups)}; expected one transformer")
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
