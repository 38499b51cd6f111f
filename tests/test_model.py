"""The transformer's own contract: input checks, dtypes and the fp16 guard, cached position embeddings."""

import pytest
import torch
from dit_fixtures import inputs, tiny_config

from pixart import PixArtTransformer
from pixart.attention import query_chunked, sdpa_attention
from pixart.embeddings import sincos_2d
from pixart.model import residual


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return PixArtTransformer(tiny_config()).eval()


def test_input_errors_name_what_was_expected(model):
    x, t, y, mask = inputs(model.config, 16, 16)
    with pytest.raises(ValueError, match=r"expects latents \(B, 4, H, W\), got \(2, 16, 16, 16\)"):
        model(torch.randn(2, 16, 16, 16), t, y, mask)
    with pytest.raises(ValueError, match="latent size 15×16 must be a multiple of the patch size 2"):
        model(torch.randn(2, 4, 15, 16), t, y, mask)
    with pytest.raises(ValueError, match=r"expects captions \(2, L, 48\), got \(2, 7, 32\)"):
        model(x, t, torch.randn(2, 7, 32), mask)
    with pytest.raises(ValueError, match=r"caption_mask \(2, 6\) must be \(2, 7\)"):
        model(x, t, y, mask[:, :6])
    mask[1] = 0
    with pytest.raises(ValueError, match=r"caption_mask of sample\(s\) \[1\] is all zeros"):
        model(x, t, y, mask)


def test_scalar_timestep_broadcasts(model):
    x, t, y, mask = inputs(model.config, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor(500.0), y, mask), model(x, torch.full((2,), 500.0), y, mask))


def test_position_embedding_is_cached_per_grid(model):
    first = model.pos_embed(8, 12, torch.device("cpu"), torch.float32)
    assert model.pos_embed(8, 12, torch.device("cpu"), torch.float32) is first
    assert model.pos_embed(12, 8, torch.device("cpu"), torch.float32) is not first


def test_sincos_axes_first_half_is_columns():
    """Named truthfully: the first half of the channels varies along a row (x), the second down a column (y)."""
    table = sincos_2d(8, 3, 4, 4, 1.0).view(3, 4, 8)
    assert torch.equal(table[0, :, :4], table[2, :, :4])  # same columns, different rows: x half equal
    assert torch.equal(table[:, 0, 4:], table[:, 3, 4:])  # same rows, different columns: y half equal
    assert not torch.equal(table[0, 0, :4], table[0, 1, :4])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_compute(dtype):
    torch.manual_seed(0)
    config = tiny_config()
    reference = PixArtTransformer(config).eval()
    half = PixArtTransformer(config, dtype=dtype, compute_dtype=dtype).eval()
    half.load_state_dict(reference.state_dict())
    x, t, y, mask = inputs(config, 16, 16)
    with torch.no_grad():
        expected, got = reference(x, t, y, mask), half(x, t, y, mask)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() <= 3e-2 * expected.abs().max()


def test_fp16_guard_keeps_the_residual_stream_finite():
    """A residual update past fp16's range saturates at ±65504 instead of turning the output into NaN."""
    torch.manual_seed(0)
    config = tiny_config()
    model = PixArtTransformer(config, dtype=torch.float16, compute_dtype=torch.float16).eval()
    with torch.no_grad():
        model.blocks[-1].mlp.fc2.bias.fill_(60000.0)
        model.blocks[-1].scale_shift_table[5].fill_(4.0)  # gate_mlp: 4 × 60000 overflows fp16
    x, t, y, mask = inputs(config, 16, 16)
    with torch.no_grad():
        out = model(x, t, y, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(
        residual(torch.tensor([60000.0], dtype=torch.float16), torch.tensor([9000.0]).half()),
        torch.tensor([65504.0], dtype=torch.float16),
    )


def test_query_chunked_attention_is_exact():
    torch.manual_seed(0)
    config = tiny_config()
    plain = PixArtTransformer(config).eval()
    chunked = PixArtTransformer(config, attention=query_chunked(sdpa_attention, 5)).eval()
    chunked.load_state_dict(plain.state_dict())
    x, t, y, mask = inputs(config, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(chunked(x, t, y, mask), plain(x, t, y, mask), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="query chunk must be >= 1"):
        query_chunked(sdpa_attention, 0)


def test_a_call_attention_replaces_the_model_attention_in_every_block(model):
    """``attention_fn`` (ComfyUI's per-model attention choice) serves the self- and cross-attention of every block,
    for that call only; the output is the model's own when it computes the same attention."""
    calls, built_in = [], []

    def counter(seen):
        def attention(q, k, v, bias):
            seen.append((tuple(q.shape), tuple(k.shape)))
            return sdpa_attention(q, k, v, bias)

        return attention

    built = PixArtTransformer(model.config, attention=counter(built_in)).eval()
    built.load_state_dict(model.state_dict())
    x, t, y, mask = inputs(model.config, 16, 16)
    with torch.no_grad():
        routed = model(x, t, y, mask, attention_fn=counter(calls))
        expected = built(x, t, y, mask)
        plain = model(x, t, y, mask)
    assert calls == built_in and len(calls) >= 2 * model.config.depth  # every attention of every block, once
    assert {k[2] for _, k in calls} == {64, y.shape[1]}  # self (16 x 16 / 2^2 tokens) and cross (caption) attention
    torch.testing.assert_close(routed, plain, rtol=0, atol=0)
    torch.testing.assert_close(routed, expected, rtol=0, atol=0)


def test_float8_weights_keep_float_modulation_tables():
    """ComfyUI stores fp8 weights: the model builds, and the tables it adds itself stay in a float dtype."""
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    model = PixArtTransformer(tiny_config(), dtype=torch.float8_e4m3fn, device="meta")
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float8_e4m3fn
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.final_layer.scale_shift_table.dtype == torch.float32
