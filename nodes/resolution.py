"""PixArt Sigma Resolution: a trained aspect-ratio bin (or a snapped custom size) -> width, height, empty latent."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import torch

from ..pixart.aspect_ratios import ASPECT_RATIO_BINS, SIZE_MULTIPLE, bins, closest_bin, snap_size
from .memory import size_refusal
from .node_api import CATEGORY, io, schema

log = logging.getLogger(__name__)
CUSTOM = "custom (width x height, snapped)"
CLOSEST = "closest bin to width x height"
BASE_CHOICES = ["1024", "2048", "512", "256", "4096"]
SIZE = {"default": 1024, "min": 16, "max": 16384, "step": 8}


def ratio_label(key: str) -> str:
    """Menu label of a height/width bin key, e.g. '0.57 landscape'."""
    value = float(key)
    return f"{key} {'square' if value == 1 else 'portrait' if value > 1 else 'landscape'}"


RATIO_LABELS = {ratio_label(k): k for k in sorted({k for t in ASPECT_RATIO_BINS.values() for k in t}, key=float)}


def pick_size(base: int, aspect_ratio: str, width: int, height: int) -> tuple[int, int, str]:
    """(width, height, note) for the node's choices; the note says where the size came from."""
    if aspect_ratio == CUSTOM:
        h, w = snap_size(height, width)
        if (w, h) == (width, height):
            return w, h, f"custom {w}x{h}"
        return w, h, f"custom {width}x{height} snapped to {w}x{h} (sides must be multiples of {SIZE_MULTIPLE} px)"
    if aspect_ratio == CLOSEST:
        h, w = closest_bin(height, width, base)
        return w, h, f"{width}x{height} -> trained bin {w}x{h} of base {base}"
    if aspect_ratio not in RATIO_LABELS:
        raise ValueError(f"PixArt Sigma Resolution: aspect_ratio {aspect_ratio!r} is not one of {list(RATIO_LABELS)}")
    key = RATIO_LABELS[aspect_ratio]
    table = bins(base)
    h, w = table[key] if key in table else closest_bin(int(float(key) * 1000), 1000, base)
    return w, h, f"bin {key} of base {base}: {w}x{h}"


class PixArtSigmaResolution(io.ComfyNode):
    """Width, height and an empty latent at a size PixArt was trained on."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaResolution",
            display_name="PixArt Sigma Resolution",
            category=CATEGORY,
            search_aliases=["pixart empty latent", "aspect ratio", "image size"],
            description=(
                "PixArt Sigma Resolution: picks an image size from the aspect-ratio bins PixArt-Sigma/alpha were "
                "trained on (base 256, 512, 1024, 2048, and a 4096 set for KV-compression experiments), or snaps a "
                "custom size to multiples of 16 px, and makes the empty latent."
            ),
            inputs=[
                io.Combo.Input(
                    "base",
                    options=BASE_CHOICES,
                    default="1024",
                    tooltip="Base resolution in pixels: 1024 for Sigma-1024, 2048 for Sigma-2K, 512, 256; 4096 has no "
                    "released model (try Sigma-2K with KV compression).",
                ),
                io.Combo.Input(
                    "aspect_ratio",
                    options=[*RATIO_LABELS, CLOSEST, CUSTOM],
                    default=ratio_label("1.0"),
                    tooltip="Height/width of a trained bin (landscape < 1 < portrait); or the bin closest to width x "
                    "height; or width x height itself, rounded to multiples of 16 px.",
                ),
                io.Int.Input(
                    "width", **SIZE, tooltip="Width in pixels, 16 to 16384; for the last two aspect_ratio choices."
                ),
                io.Int.Input(
                    "height", **SIZE, tooltip="Height in pixels, 16 to 16384; for the last two aspect_ratio choices."
                ),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Number of images, 1 to 4096."),
            ],
            outputs=[
                io.Latent.Output(
                    "latent",
                    display_name="latent",
                    tooltip="Empty 4-channel latent of the chosen size (batch_size images).",
                ),
                io.Int.Output("width_out", display_name="width", tooltip="Image width in pixels."),
                io.Int.Output("height_out", display_name="height", tooltip="Image height in pixels."),
                io.String.Output(
                    "note",
                    display_name="note",
                    tooltip="Where the size came from, and whether a custom size was snapped.",
                ),
            ],
        )

    @classmethod
    def execute(cls, base, aspect_ratio, width, height, batch_size) -> io.NodeOutput:
        width, height, note = pick_size(int(base), aspect_ratio, width, height)
        if "snapped" in note:
            log.warning("PixArt Sigma Resolution: %s", note)
        device = mm.intermediate_device()
        refusal = size_refusal(batch_size, width, height, mm.get_free_memory(device))
        if refusal is not None:
            raise MemoryError(refusal)
        latent = torch.zeros([batch_size, 4, height // 8, width // 8], device=device)
        return io.NodeOutput({"samples": latent}, width, height, note)
