"""Aspect-ratio bins, closest_bin and size snapping (pixart/aspect_ratios.py)."""

import pytest

from pixart.aspect_ratios import ASPECT_RATIO_BINS, BASES, bins, closest_bin, snap_size, snap_to_multiple

# Entries copied by hand from diffusers' ASPECT_RATIO_*_BIN tables, (height, width).
KNOWN = [
    (256, "0.25", (128, 512)),
    (256, "0.48", (176, 368)),
    (256, "1.0", (256, 256)),
    (512, "0.57", (384, 672)),
    (512, "3.0", (864, 288)),
    (1024, "0.28", (512, 1856)),
    (1024, "0.57", (768, 1344)),
    (1024, "1.75", (1344, 768)),
    (2048, "0.26", (1024, 3968)),
    (2048, "2.89", (3328, 1152)),
    (2048, "3.88", (3968, 1024)),
    (2048, "1.0", (2048, 2048)),
]


@pytest.mark.parametrize(("base", "key", "size"), KNOWN)
def test_known_reference_entries(base, key, size):
    assert bins(base)[key] == size


def test_table_sizes_and_bases():
    assert BASES == (256, 512, 1024, 2048, 4096)
    assert [len(bins(b)) for b in BASES] == [33, 33, 33, 40, 40]
    assert bins(4096)["1.0"] == (4096, 4096)
    assert bins(4096)["0.25"] == (2048, 8192)


@pytest.mark.parametrize("base", BASES)
def test_every_bin_is_consistent(base):
    table = ASPECT_RATIO_BINS[base]
    keys = [float(k) for k in table]
    assert keys == sorted(keys)
    for key, (h, w) in table.items():
        assert h % 16 == 0 and w % 16 == 0, (base, key)
        assert abs(h / w - float(key)) < 0.06, (base, key, h, w)  # keys are the rounded trained ratios
        # pixel count stays near base², within the spread of the reference tables
        assert 0.7 < h * w / base**2 < 1.15, (base, key, h, w)


@pytest.mark.parametrize(
    ("height", "width", "base", "expected"),
    [
        (1024, 1024, 1024, (1024, 1024)),
        (1080, 1920, 1024, (768, 1344)),  # 16:9 landscape -> the 0.57 bin
        (1920, 1080, 1024, (1344, 768)),  # portrait -> 1.75
        (100, 10000, 1024, (512, 2048)),  # beyond the table clamps to the extreme bin
        (10000, 100, 512, (1024, 256)),
        (3, 4, 256, (208, 288)),  # 0.75: 0.72 and 0.78 are 0.03 away; the first (smaller) wins, as in diffusers
        (1000, 3700, 2048, (1024, 3840)),  # 0.27 is in the 2048 table only
    ],
)
def test_closest_bin(height, width, base, expected):
    assert closest_bin(height, width, base) == expected


def test_closest_bin_errors():
    with pytest.raises(ValueError, match="base 768"):
        closest_bin(512, 512, 768)
    with pytest.raises(ValueError, match="positive"):
        closest_bin(0, 512, 1024)


@pytest.mark.parametrize(
    ("value", "multiple", "expected"),
    [(1000, 16, 1008), (1024, 16, 1024), (1007, 16, 1008), (1031, 16, 1024), (1032, 16, 1040), (3, 16, 16), (0, 8, 8)],
)
def test_snap_to_multiple(value, multiple, expected):
    assert snap_to_multiple(value, multiple) == expected


def test_snap_size_default_multiple():
    assert snap_size(1000, 777) == (1008, 784)
    with pytest.raises(ValueError):
        snap_to_multiple(10, 0)
