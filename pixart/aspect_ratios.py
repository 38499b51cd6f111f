"""Aspect-ratio bins the PixArt models were trained on, and helpers to pick or snap an image size.

PixArt-alpha/Sigma train each base resolution on a fixed set of (height, width) buckets, keyed by height / width rounded
to two decimals. The reference pipelines generate at the bucket closest to the requested aspect ratio and resize
afterwards (diffusers ``ASPECT_RATIO_{256,512,1024}_BIN`` in ``pipeline_pixart_alpha.py`` and
``ASPECT_RATIO_2048_BIN`` in ``pipeline_pixart_sigma.py``). The 256, 512 and 1024 tables hold the same 33 ratios,
each twice the size of the one below; the 2048 table adds seven ratios near 0.25 and 4.0. No 4K model was
released: the 4096 set here is the 2048 set doubled, for experiments with KV compression.

All sizes are in pixels, ``(height, width)``, and are multiples of 16 (VAE factor 8 × patch 2).
"""

from __future__ import annotations

# height / width key -> (height, width) at base 1024 (the 256 and 512 tables are this one divided by 4 and 2).
_BINS_1024: dict[str, tuple[int, int]] = {
    "0.25": (512, 2048), "0.28": (512, 1856), "0.32": (576, 1792), "0.33": (576, 1728), "0.35": (576, 1664),
    "0.4": (640, 1600), "0.42": (640, 1536), "0.48": (704, 1472), "0.5": (704, 1408), "0.52": (704, 1344),
    "0.57": (768, 1344), "0.6": (768, 1280), "0.68": (832, 1216), "0.72": (832, 1152), "0.78": (896, 1152),
    "0.82": (896, 1088), "0.88": (960, 1088), "0.94": (960, 1024), "1.0": (1024, 1024), "1.07": (1024, 960),
    "1.13": (1088, 960), "1.21": (1088, 896), "1.29": (1152, 896), "1.38": (1152, 832), "1.46": (1216, 832),
    "1.67": (1280, 768), "1.75": (1344, 768), "2.0": (1408, 704), "2.09": (1472, 704), "2.4": (1536, 640),
    "2.5": (1600, 640), "3.0": (1728, 576), "4.0": (2048, 512),
}  # fmt: skip

# height / width key -> (height, width) at base 2048 (the 4096 set is this one doubled).
_BINS_2048: dict[str, tuple[int, int]] = {
    "0.25": (1024, 4096), "0.26": (1024, 3968), "0.27": (1024, 3840), "0.28": (1024, 3712), "0.32": (1152, 3584),
    "0.33": (1152, 3456), "0.35": (1152, 3328), "0.4": (1280, 3200), "0.42": (1280, 3072), "0.48": (1408, 2944),
    "0.5": (1408, 2816), "0.52": (1408, 2688), "0.57": (1536, 2688), "0.6": (1536, 2560), "0.68": (1664, 2432),
    "0.72": (1664, 2304), "0.78": (1792, 2304), "0.82": (1792, 2176), "0.88": (1920, 2176), "0.94": (1920, 2048),
    "1.0": (2048, 2048), "1.07": (2048, 1920), "1.13": (2176, 1920), "1.21": (2176, 1792), "1.29": (2304, 1792),
    "1.38": (2304, 1664), "1.46": (2432, 1664), "1.67": (2560, 1536), "1.75": (2688, 1536), "2.0": (2816, 1408),
    "2.09": (2944, 1408), "2.4": (3072, 1280), "2.5": (3200, 1280), "2.89": (3328, 1152), "3.0": (3456, 1152),
    "3.11": (3584, 1152), "3.62": (3712, 1024), "3.75": (3840, 1024), "3.88": (3968, 1024), "4.0": (4096, 1024),
}  # fmt: skip


def _scaled(table: dict[str, tuple[int, int]], num: int, den: int) -> dict[str, tuple[int, int]]:
    return {key: (h * num // den, w * num // den) for key, (h, w) in table.items()}


ASPECT_RATIO_BINS: dict[int, dict[str, tuple[int, int]]] = {
    256: _scaled(_BINS_1024, 1, 4),
    512: _scaled(_BINS_1024, 1, 2),
    1024: dict(_BINS_1024),
    2048: dict(_BINS_2048),
    4096: _scaled(_BINS_2048, 2, 1),
}
BASES: tuple[int, ...] = tuple(ASPECT_RATIO_BINS)
SIZE_MULTIPLE = 16  # pixels: VAE downscale 8 × patch size 2


def bins(base: int) -> dict[str, tuple[int, int]]:
    """The ``{height/width key: (height, width)}`` table of one base resolution (256, 512, 1024, 2048 or 4096)."""
    try:
        return ASPECT_RATIO_BINS[int(base)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"aspect-ratio bins: base {base!r} is not one of {BASES}") from None


def closest_bin(height: int, width: int, base: int) -> tuple[int, int]:
    """The trained ``(height, width)`` whose ratio is nearest ``height / width``; ties go to the smaller ratio."""
    if height <= 0 or width <= 0:
        raise ValueError(f"closest_bin: height and width must be positive, got {height}x{width}")
    table = bins(base)
    ratio = height / width
    key = min(table, key=lambda k: abs(float(k) - ratio))  # dict order is ascending, so min keeps the first tie
    return table[key]


def snap_to_multiple(value: int, multiple: int = SIZE_MULTIPLE) -> int:
    """``value`` rounded to the nearest multiple of ``multiple`` (halves round up), at least ``multiple``."""
    if multiple < 1:
        raise ValueError(f"snap_to_multiple: multiple must be >= 1, got {multiple}")
    return max(multiple, (int(value) + multiple // 2) // multiple * multiple)


def snap_size(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """``(height, width)`` each snapped with :func:`snap_to_multiple`."""
    return snap_to_multiple(height, multiple), snap_to_multiple(width, multiple)
