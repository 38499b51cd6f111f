"""Our transformer equals diffusers' PixArtTransformer2DModel with the same weights (fp32, relative error <= 1e-5)."""

import pytest
import torch
from dit_fixtures import inputs, max_rel_error, reference_forward

from pixart import VARIANTS, PixArtTransformer
from pixart.checkpoints.keymap import diffusers_to_official

pytest.importorskip("diffusers")

TOL = 1e-5


@pytest.mark.parametrize("micro", [False, True], ids=["sigma", "alpha-micro"])
@pytest.mark.parametrize(
    "height,width",
    [(64, 64), (48, 80), (80, 48), (18, 30), (16, 16)],
    ids=["square", "wide", "tall", "odd-grid", "native"],
)
def test_forward_matches_diffusers(micro, height, width, tiny_models):
    config, reference, ours = tiny_models(micro)
    x, t, y, mask = inputs(config, height, width, batch=3)
    with torch.no_grad():
        got = ours(x, t, y, mask)
    assert got.shape == (3, 8, height, width)
    assert max_rel_error(got, reference_forward(reference, x, t, y, mask, micro)) <= TOL


def test_small_base_size_256(tiny_models):
    """A 256-px-style base (pe_interpolation 0.5), where ComfyUI's built-in path divides by zero."""
    config, reference, ours = tiny_models(sample_size=8, pe_interpolation=0.5)
    x, t, y, mask = inputs(config, 32, 32)
    with torch.no_grad():
        got = ours(x, t, y, mask)
    assert max_rel_error(got, reference_forward(reference, x, t, y, mask)) <= TOL


def test_no_mask_and_full_mask_agree_with_reference(tiny_models):
    config, reference, ours = tiny_models()
    x, t, y, _ = inputs(config, 32, 32)
    ones = torch.ones(y.shape[:2])
    with torch.no_grad():
        assert max_rel_error(ours(x, t, y), reference_forward(reference, x, t, y, ones)) <= TOL
        assert max_rel_error(ours(x, t, y, ones), reference_forward(reference, x, t, y, ones)) <= TOL


def test_batch_with_different_caption_lengths_does_not_leak(tiny_models):
    """Each sample of a mixed batch equals that sample run alone with only its own caption tokens."""
    config, _, ours = tiny_models()
    x, t, y, mask = inputs(config, 32, 48, batch=3, tokens=9)
    with torch.no_grad():
        batched = ours(x, t, y, mask)
        for i in range(3):
            n = int(mask[i].sum())
            alone = ours(x[i : i + 1], t[i : i + 1], y[i : i + 1, :n])
            assert max_rel_error(batched[i : i + 1], alone) <= TOL


def test_alpha_explicit_micro_conditions_match(tiny_models):
    config, reference, ours = tiny_models(micro=True)
    x, t, y, mask = inputs(config, 32, 48)
    resolution = torch.tensor([[1024.0, 768.0], [512.0, 2048.0]])
    aspect = torch.tensor([[1.33], [0.25]])
    cond = {"resolution": resolution, "aspect_ratio": aspect}
    with torch.no_grad():
        expected = reference(
            x, encoder_hidden_states=y, timestep=t, encoder_attention_mask=mask, added_cond_kwargs=cond
        )
        got = ours(x, t, y, mask, resolution=resolution, aspect_ratio=aspect)
    assert max_rel_error(got, expected.sample) <= TOL


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_preset_shapes_match_diffusers(name):
    """Every preset builds exactly the tensors diffusers builds for that released model (meta tensors)."""
    from diffusers import PixArtTransformer2DModel

    config = VARIANTS[name]
    with torch.device("meta"):
        reference = PixArtTransformer2DModel(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            cross_attention_dim=1152,
            sample_size=config.sample_size,
            caption_channels=4096,
            interpolation_scale=config.pe_interpolation,
            use_additional_conditions=config.micro_conditions,
        )
        ours = PixArtTransformer(config)
    expected, unknown = diffusers_to_official(reference.state_dict())
    assert not unknown
    got = ours.state_dict()
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert config.head_dim == 72 and config.depth == 28
