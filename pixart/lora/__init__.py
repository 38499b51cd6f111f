"""LoRA for PixArt: read diffusers, PEFT, kohya, LyCORIS, ComfyUI-trained and official-keyed LoRAs, normalise them
to official parameter keys, check them against a model, merge what plain PyTorch can (``merge_lora``) or hand them
to ComfyUI's weight adapters (nodes/lora_loader.py)."""

from ..errors import LoraError
from .files import PEFT_CONFIG, PEFT_WEIGHTS, PeftSettings, RawLora, read_lora
from .patches import LoraPatch
from .targets import Lora, LoraTarget, check_fit, load_lora, merge_lora, parse_lora, peft_dora

__all__ = [
    "Lora",
    "LoraError",
    "LoraPatch",
    "LoraTarget",
    "PEFT_CONFIG",
    "PEFT_WEIGHTS",
    "PeftSettings",
    "RawLora",
    "check_fit",
    "load_lora",
    "merge_lora",
    "parse_lora",
    "peft_dora",
    "read_lora",
]
