"""LoRA for PixArt: read diffusers, PEFT, kohya and official-keyed LoRAs, normalise them to official weight keys,
check them against a model, merge them into a state dict (``merge_lora``) or hand them to ComfyUI's patcher."""

from ..errors import LoraError
from .files import PEFT_CONFIG, PEFT_WEIGHTS, PeftSettings, RawLora, read_lora
from .targets import Lora, LoraTarget, check_fit, load_lora, merge_lora, parse_lora

__all__ = [
    "Lora",
    "LoraError",
    "LoraTarget",
    "PEFT_CONFIG",
    "PEFT_WEIGHTS",
    "PeftSettings",
    "RawLora",
    "check_fit",
    "load_lora",
    "merge_lora",
    "parse_lora",
    "read_lora",
]
