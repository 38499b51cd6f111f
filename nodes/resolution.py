"""PixArt Sigma Resolution: a trained aspect-ratio bin (or a snapped custom size) -> width, height, empty latent."""

from __future__ import annotations

import logging

from pixart.aspect_ratios import ASPECT_RATIO_BINS, SIZE_MULTIPLE, bins, closest_bin, snap_size

from .common import CATEGORY, spec

log = logging.getLogger(__name__)
CUSTOM = "custom (width x height, snapped)"
CLOSEST = "closest bin to width x height"
BASE_CHOICES = ["1024", "2048", "512", "256", "4096"]


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


class PixArtSigmaResolution:
    """Width, height and an empty latent at a size PixArt was trained on."""

    TITLE = "PixArt Sigma Resolution"
    CATEGORY = CATEGORY
    FUNCTION = "resolve"
    RETURN_TYPES = ("LATENT", "INT", "INT", "STRING")
    RETURN_NAMES = ("latent", "width", "height", "note")
    OUTPUT_TOOLTIPS = (
        "Empty 4-channel latent of the chosen size (batch_size images).",
        "Image width in pixels.",
        "Image height in pixels.",
        "Where the size came from, and whether a custom size was snapped.",
    )
    DESCRIPTION = (
        "PixArt Sigma Resolution: picks an image size from the aspect-ratio bins PixArt-Sigma/alpha were trained on "
        "(base 256, 512, 1024, 2048, and a 4096 set for KV-compression experiments), or snaps a custom size to "
        "multiples of 16 px, and makes the empty latent."
    )

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        size = {"min": 16, "max": 16384, "step": 8}
        return {
            "required": {
                "base": spec(
                    BASE_CHOICES,
                    "Base resolution in pixels: 1024 for Sigma-1024, 2048 for Sigma-2K, 512, 256; 4096 has no "
                    "released model (try Sigma-2K with KV compression).",
                    default="1024",
                ),
                "aspect_ratio": spec(
                    [*RATIO_LABELS, CLOSEST, CUSTOM],
                    "Height/width of a trained bin (landscape < 1 < portrait); or the bin closest to width x height; "
                    "or width x height itself, rounded to multiples of 16 px.",
                    default=ratio_label("1.0"),
                ),
                "width": spec(
                    "INT", "Width in pixels, 16 to 16384; for the last two aspect_ratio choices.", default=1024, **size
                ),
                "height": spec(
                    "INT", "Height in pixels, 16 to 16384; for the last two aspect_ratio choices.", default=1024, **size
                ),
                "batch_size": spec("INT", "Number of images, 1 to 4096.", default=1, min=1, max=4096),
            }
        }

    def resolve(self, base, aspect_ratio, width, height, batch_size):
        import comfy.model_management as mm
        import torch

        width, height, note = pick_size(int(base), aspect_ratio, width, height)
        if "snapped" in note:
            log.warning("PixArt Sigma Resolution: %s", note)
        latent = torch.zeros([batch_size, 4, height // 8, width // 8], device=mm.intermediate_device())
        return ({"samples": latent}, width, height, note)
