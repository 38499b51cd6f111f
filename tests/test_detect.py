"""Variant detection from state dicts: sizes from shapes, the rest from the file's own hints or an explicit variant."""

import logging

import pytest
import torch

from pixart import VARIANTS, CheckpointError, PixArtTransformer
from pixart.detect import detect_config
from pixart.embeddings import sincos_2d


def official_like(name: str, pos_embed: bool = True, null_caption: bool = True) -> dict:
    """A depth-1 state dict shaped like the released ``name`` (meta tensors, real position table)."""
    config = VARIANTS[name].replace(depth=1)
    with torch.device("meta"):
        state_dict = dict(PixArtTransformer(config).state_dict())
    if pos_embed:
        g = config.base_grid
        state_dict["pos_embed"] = sincos_2d(1152, g, g, g, config.pe_interpolation).float()[None]
    if null_caption:
        state_dict["y_embedder.y_embedding"] = torch.empty(config.caption_tokens, 4096, device="meta")
    return state_dict


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_official_files_detect_their_variant(name):
    assert detect_config(official_like(name), "x.pth") == VARIANTS[name].replace(depth=1)


def test_without_hints_assumes_sigma_1024_and_says_so(caplog):
    state_dict = official_like("sigma-512", pos_embed=False, null_caption=False)
    with caplog.at_level(logging.WARNING):
        config = detect_config(state_dict, "bare.safetensors")
    assert config == VARIANTS["sigma-1024"].replace(depth=1)
    assert "cannot tell PixArt-Sigma from PixArt-alpha" in caplog.text
    assert "assuming 1024 px" in caplog.text


def test_alpha_micro_conditions_need_no_hint(caplog):
    state_dict = official_like("alpha-1024", pos_embed=False, null_caption=False)
    with caplog.at_level(logging.WARNING):
        assert detect_config(state_dict, "a.safetensors").family == "alpha"
    assert "Sigma from PixArt-alpha" not in caplog.text


def test_explicit_variant_wins_over_file_hints():
    state_dict = official_like("sigma-1024")
    assert detect_config(state_dict, "x.pth", "sigma-2k") == VARIANTS["sigma-2k"].replace(depth=1)
    config = detect_config(state_dict, "x.pth", {"variant": "sigma-512", "pe_interpolation": 1.5})
    assert (config.sample_size, config.pe_interpolation) == (64, 1.5)


def test_side_file_hints_are_used():
    state_dict = official_like("sigma-1024", pos_embed=False, null_caption=False)
    hints = {"num_heads": 8, "sample_size": 256, "pe_interpolation": 4.0, "family": "sigma"}
    config = detect_config(state_dict, "folder", hints=hints)
    assert (config.num_heads, config.sample_size, config.pe_interpolation) == (8, 256, 4.0)


def test_kv_conv_layers_are_detected():
    config = VARIANTS["sigma-1024"].replace(depth=4, conv_kv_layers=(2, 3), conv_kv_factor=2)
    with torch.device("meta"):
        state_dict = dict(PixArtTransformer(config).state_dict())
    detected = detect_config(state_dict, "kv.pth", "sigma-1024")
    assert (detected.conv_kv_layers, detected.conv_kv_factor) == ((2, 3), 2)


def test_shape_clash_with_explicit_override_is_an_error():
    with pytest.raises(CheckpointError, match="depth: asked 28, file has 1"):
        detect_config(official_like("sigma-1024"), "x.pth", {"depth": 28})
