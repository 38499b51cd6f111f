"""LoRA key names and the official PixArt module each one updates.

A LoRA key is ``<prefix><module><part suffix>``:

* prefix: ``transformer.`` (diffusers ``save_lora_weights``), ``base_model.model.`` (PEFT), ``unet.`` (the official
  PixArt script saves through ``StableDiffusionPipeline``), ``diffusion_model.`` (ComfyUI's TrainLoraNode),
  ``lora_unet_`` (kohya), ``lora_transformer_`` (OneTrainer), ``lycoris_`` (LyCORIS, as SimpleTuner saves it);
  stacked prefixes such as ``unet.base_model.model.`` are stripped one after the other;
* module: a diffusers name (``transformer_blocks.3.attn1.to_q``), an official one (``blocks.3.attn.qkv``), either
  with ``_`` for ``.`` after a ``_`` prefix, or the old attention-processor name (``attn1.processor.to_q_lora``);
* part suffix: one of ``PART_SUFFIXES``; each is named by the part ComfyUI's weight adapters read
  (comfy/weight_adapter: ``lora_up.weight``, ``hada_w1_a``, ``lokr_w1``, ``oft_blocks``, ...; comfy/lora.py:
  ``alpha``, ``dora_scale``, ``diff``, ``diff_b``, ``set_weight``), plus PEFT's ``lora_B.bias`` and
  ``lora_magnitude_vector``.
"""

from __future__ import annotations

import functools
import re

from ..checkpoints.keymap import (
    COMFYUI_PREFIX,
    DIFFUSION_MODEL_PREFIX,
    PIPELINE_PREFIX,
    ModuleTarget,
    diffusers_module_names,
    diffusers_module_target,
)

DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"
UP_BIAS, MAGNITUDE, DORA_SCALE = "lora_up.bias", "magnitude", "dora_scale"
DIFF, DIFF_B, SET_WEIGHT = "diff", "diff_b", "set_weight"
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_PARTS = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")
OFT_BLOCKS = "oft_blocks"

# (key suffix, part). Suffixes are matched as key endings; no suffix here ends another one.
PART_SUFFIXES = (
    (".lora_A.weight", DOWN),  # PEFT, diffusers
    (".lora_B.weight", UP),
    (".lora_A.default.weight", DOWN),  # PEFT state dicts with the adapter name kept
    (".lora_B.default.weight", UP),
    (".lora_B.bias", UP_BIAS),  # PEFT lora_bias=True
    (".lora_magnitude_vector", MAGNITUDE),  # PEFT DoRA
    (".lora.down.weight", DOWN),  # older diffusers
    (".lora.up.weight", UP),
    ("_lora.down.weight", DOWN),  # diffusers attention processors
    ("_lora.up.weight", UP),
    (".lora_down.weight", DOWN),  # kohya, LyCORIS LoRA/LoCon, ComfyUI's TrainLoraNode
    (".lora_up.weight", UP),
    (".alpha", ALPHA),
    (".dora_scale", DORA_SCALE),  # LyCORIS / kohya DoRA
    *((f".{part}", part) for part in LOHA_PARTS + LOKR_PARTS),
    (f".{OFT_BLOCKS}", OFT_BLOCKS),
    (".diff", DIFF),  # a full weight difference (TrainLoraNode: 1-D weights)
    (".diff_b", DIFF_B),  # a bias difference (TrainLoraNode: every bias)
    (".set_weight", SET_WEIGHT),
)

# Substrings of keys this loader recognises but cannot apply, with the reason shown to the user.
UNSUPPORTED = (
    ("lora_mid", "LoCon/Tucker mid weights (convolutions) are not supported"),
    ("hada_t1", "Tucker-decomposed LoHa (convolutions) is not supported"),
    ("hada_t2", "Tucker-decomposed LoHa (convolutions) is not supported"),
    ("lokr_t2", "Tucker-decomposed LoKr (convolutions) is not supported"),
    (".lora_A.bias", "a bias on lora_A is not a PEFT LoRA part"),
    (".rescale", "OFT rescale is not applied by ComfyUI's weight patches"),
    (".a1.weight", "GLoRA is not supported"),
    (".a2.weight", "GLoRA is not supported"),
    (".b1.weight", "GLoRA is not supported"),
    (".b2.weight", "GLoRA is not supported"),
    (".w_norm", "norm-layer weights are not part of PixArt's DiT"),
    (".b_norm", "norm-layer weights are not part of PixArt's DiT"),
)

PREFIXES = ("base_model.model.", PIPELINE_PREFIX, "unet.", COMFYUI_PREFIX, DIFFUSION_MODEL_PREFIX)
UNDERSCORE_PREFIXES = ("lora_unet_", "lora_transformer_", "lycoris_")

# Linear/conv modules of our model (official names) that a LoRA may update. {i} is a block index.
OFFICIAL_MODULES = (
    "x_embedder.proj",
    "t_embedder.mlp.0",
    "t_embedder.mlp.2",
    "t_block.1",
    "y_embedder.y_proj.fc1",
    "y_embedder.y_proj.fc2",
    "csize_embedder.mlp.0",
    "csize_embedder.mlp.2",
    "ar_embedder.mlp.0",
    "ar_embedder.mlp.2",
    "final_layer.linear",
    "blocks.{i}.attn.qkv",
    "blocks.{i}.attn.proj",
    "blocks.{i}.cross_attn.q_linear",
    "blocks.{i}.cross_attn.kv_linear",
    "blocks.{i}.cross_attn.proj",
    "blocks.{i}.mlp.fc1",
    "blocks.{i}.mlp.fc2",
)

_PROCESSOR = re.compile(r"^(.*\.attn[12])\.processor\.(to_q|to_k|to_v|to_out)(?:_lora)?$")


def _template_regex(template: str, separator: str) -> re.Pattern:
    """``blocks.{i}.attn.qkv`` -> a regex for that name with ``separator`` between components."""
    parts = [r"(\d{1,9})" if part == "{i}" else re.escape(part) for part in template.split(".")]
    return re.compile("^" + re.escape(separator).join(parts) + "$")


@functools.cache
def _official_regexes() -> tuple[re.Pattern, ...]:
    """Dotted official module names."""
    return tuple(_template_regex(t, ".") for t in OFFICIAL_MODULES)


@functools.cache
def _underscore_templates() -> tuple[tuple[re.Pattern, str], ...]:
    """(regex for the ``_`` form, dotted template) for every official and diffusers module name."""
    templates = OFFICIAL_MODULES + diffusers_module_names()
    return tuple((_template_regex(t, "_"), t) for t in templates)


def split_key(key: str) -> tuple[str, str]:
    """(module, part) of a LoRA key, part one of ``PART_SUFFIXES``' parts; ``""`` for keys of no known kind."""
    for suffix, part in PART_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return key, ""


def unsupported_reason(key: str) -> str:
    """Why ``key`` cannot be applied, for the error listing it."""
    for marker, reason in UNSUPPORTED:
        if marker in key:
            return reason
    return "not a LoRA, LyCORIS (LoHa, LoKr, OFT, DoRA) or weight-difference tensor"


def canonical_module(module: str) -> str:
    """The module name with storage prefixes removed, old processor names and ``_`` forms turned into dots.

    ``unet.base_model.model.transformer_blocks.0.attn1.to_q`` -> ``transformer_blocks.0.attn1.to_q``;
    ``lora_unet_blocks_0_attn_qkv`` -> ``blocks.0.attn.qkv``. Unknown ``_`` forms stay as they are.
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES + UNDERSCORE_PREFIXES:
            if module.startswith(prefix):
                module, stripped = module[len(prefix) :], True
    match = _PROCESSOR.match(module)
    if match:
        projection = "to_out.0" if match.group(2) == "to_out" else match.group(2)
        return f"{match.group(1)}.{projection}"
    if "." not in module:
        return _dotted(module)
    return module


def _dotted(name: str) -> str:
    """The dotted module name behind a ``_`` form, or ``name`` itself when no single known name matches."""
    found = {
        template.replace("{i}", match.group(1)) if match.groups() else template
        for regex, template in _underscore_templates()
        if (match := regex.match(name))
    }
    return found.pop() if len(found) == 1 else name


def module_target(module: str) -> ModuleTarget | None:
    """The official module (and row chunk of a fused weight) that canonical ``module`` updates; None if unknown."""
    target = diffusers_module_target(module)
    if target is not None:
        return target
    if any(regex.match(module) for regex in _official_regexes()):
        return ModuleTarget(module)
    return None
