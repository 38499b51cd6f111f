"""KV token compression: each mode equals a few-line independent implementation; off equals the plain model."""

import math

import pytest
import torch
from dit_fixtures import inputs, max_rel_error, tiny_config
from torch import nn

from pixart import KVCompress, PixArtTransformer, SettingError, parse_layers
from pixart.embeddings import default_operations
from pixart.kv_compression import compress_kv, compressed_grid_size

OPS = default_operations()  # the layers the model builds its trained KV compression from


def _windows(h, w, s, keep):
    """Top-left corners and sizes of the s×s windows over an h×w grid."""
    rows = range(0, h if keep else h - h % s, s)
    cols = range(0, w if keep else w - w % s, s)
    return [(r, c, min(s, h - r), min(s, w - c)) for r in rows for c in cols]


def independent(tokens, h, w, mode, s, remainder):
    """Loop-over-windows reference of the training-free modes. tokens (B, N, C) -> (B, N', C)."""
    grid = tokens.view(tokens.shape[0], h, w, -1)
    out = []
    for r, c, dh, dw in _windows(h, w, s, remainder == "keep"):
        if mode in ("uniform", "ave"):
            out.append(grid[:, r, c])
        else:
            out.append(grid[:, r : r + dh, c : c + dw].mean(dim=(1, 2)))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("mode", ["uniform", "ave", "avgpool"])
@pytest.mark.parametrize("remainder", ["keep", "drop"])
@pytest.mark.parametrize("h,w,s", [(8, 8, 2), (9, 15, 2), (7, 5, 3), (12, 8, 4), (5, 5, 2)])
def test_training_free_modes_match_independent(mode, remainder, h, w, s):
    tokens = torch.randn(2, h * w, 6)
    got = compress_kv(tokens, (h, w), mode, s, remainder)
    expected = independent(tokens, h, w, mode, s, remainder)
    assert got.shape == expected.shape
    assert got.shape[1] == math.prod(compressed_grid_size(h, w, s, remainder))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_ave_drop_is_official_nearest_resize():
    """The official 'ave': F.interpolate(scale_factor=1/s, mode='nearest') on the (B, C, H, W) grid, floored."""
    h, w, s = 9, 7, 2
    tokens = torch.randn(1, h * w, 4)
    grid = tokens.transpose(1, 2).reshape(1, 4, h, w)
    official = nn.functional.interpolate(grid, scale_factor=1 / s, mode="nearest").flatten(2).transpose(1, 2)
    torch.testing.assert_close(compress_kv(tokens, (h, w), "ave", s, "drop"), official)


@pytest.mark.parametrize("remainder", ["keep", "drop"])
def test_conv_with_averaging_weights_equals_avgpool(remainder):
    c, s, h, w = 6, 2, 8, 10
    conv = OPS.Conv2d(c, c, s, stride=s, groups=c)
    with torch.no_grad():
        conv.weight.fill_(1 / s**2)
        conv.bias.zero_()
    tokens = torch.randn(2, h * w, c)
    got = compress_kv(tokens, (h, w), "conv", s, remainder, conv=conv, norm=nn.Identity())
    torch.testing.assert_close(got, compress_kv(tokens, (h, w), "avgpool", s, remainder))


def test_conv_on_odd_grid_drop_floors_like_official():
    c, s = 4, 2
    conv = OPS.Conv2d(c, c, s, stride=s, groups=c)
    out = compress_kv(torch.randn(1, 9 * 7, c), (9, 7), "conv", s, "drop", conv=conv, norm=OPS.LayerNorm(c))
    assert out.shape == (1, 4 * 3, c)
    out = compress_kv(torch.randn(1, 9 * 7, c), (9, 7), "conv", s, "keep", conv=conv, norm=OPS.LayerNorm(c))
    assert out.shape == (1, 5 * 4, c)


def _model(kv=None, **changes):
    torch.manual_seed(0)
    model = PixArtTransformer(tiny_config(**changes), kv_compress=kv).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_off_and_empty_layer_set_equal_uncompressed():
    model = _model()
    x, t, y, mask = inputs(model.config, 16, 24)
    with torch.no_grad():
        plain = model(x, t, y, mask)
        model.set_kv_compress(KVCompress("avgpool", 2, layers=()))
        assert torch.equal(model(x, t, y, mask), plain)
        model.set_kv_compress(KVCompress("avgpool", 2))
        assert not torch.allclose(model(x, t, y, mask), plain)
        model.set_kv_compress(None)
        assert torch.equal(model(x, t, y, mask), plain)


@pytest.mark.parametrize("mode", ["uniform", "ave", "avgpool"])
@pytest.mark.parametrize("h,w", [(16, 24), (18, 14)], ids=["even", "odd-grid"])
def test_self_attention_uses_compressed_keys(mode, h, w):
    """One compressed block's self-attention equals attention written out with the independent downsampling."""
    model = _model(KVCompress(mode, 2, layers=(1,)))
    attn = model.blocks[1].attn
    gh, gw = h // 2, w // 2
    x = torch.randn(2, gh * gw, model.config.hidden_size)
    with torch.no_grad():
        got = attn(x, (gh, gw))
        q, k, v = attn.qkv(x).chunk(3, dim=-1)
        k, v = (independent(z, gh, gw, mode, 2, "keep") for z in (k, v))
        heads, d = model.config.num_heads, model.config.head_dim

        def split(z):
            return z.view(2, -1, heads, d).transpose(1, 2)

        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
        expected = attn.proj((weights @ split(v)).transpose(1, 2).reshape(2, -1, heads * d))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_chosen_layers_compress():
    model = _model(KVCompress("uniform", 2))
    assert [b.attn.kv_compress is not None for b in model.blocks] == [False, True]
    model.set_kv_compress(KVCompress("uniform", 3, layers=(0, 1)))
    assert all(b.attn.kv_compress.factor == 3 for b in model.blocks)


def test_trained_conv_weights_used_and_equal_avgpool_when_averaging():
    model = _model(conv_kv_layers=(0, 1), conv_kv_factor=2)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.sr.weight.fill_(0.25)
            block.attn.sr.bias.zero_()
            block.attn.norm = nn.Identity()
    x, t, y, mask = inputs(model.config, 16, 20)
    with torch.no_grad():
        model.set_kv_compress(KVCompress("conv", 2, layers=(0, 1)))
        conv = model(x, t, y, mask)
        model.set_kv_compress(KVCompress("avgpool", 2, layers=(0, 1)))
        pooled = model(x, t, y, mask)
    assert max_rel_error(conv, pooled) < 1e-5
    with pytest.raises(ValueError, match="trained factor 2 on layers \\[0, 1\\]; asked for factor 3"):
        model.set_kv_compress(KVCompress("conv", 3, layers=(0, 1)))


@pytest.mark.parametrize("mode", ["conv", "ave", "uniform", "avgpool"])
def test_odd_grids_run_in_every_mode(mode):
    model = _model(KVCompress(mode, 2, layers=(0, 1)), conv_kv_layers=(0, 1), conv_kv_factor=2)
    x, t, y, mask = inputs(model.config, 18, 30)
    with torch.no_grad():
        out = model(x, t, y, mask)
    assert out.shape == (2, 8, 18, 30) and torch.isfinite(out).all()


def test_settings_validation():
    with pytest.raises(SettingError, match="mode must be one of"):
        KVCompress("mean")
    with pytest.raises(SettingError, match="factor must be an integer in 2..8"):
        KVCompress("uniform", 1)
    with pytest.raises(SettingError, match="remainder must be one of"):
        KVCompress("uniform", 2, remainder="pad")
    with pytest.raises(SettingError, match=r"layers \[5\] are outside 0..1"):
        PixArtTransformer(tiny_config(), kv_compress=KVCompress("uniform", 2, layers=(5,)))
    assert KVCompress("uniform").layer_set(28) == frozenset(range(14, 28))
    assert parse_layers("14-27") == tuple(range(14, 28))
    assert parse_layers("0, 2,4-5") == (0, 2, 4, 5)
    assert KVCompress.from_text("uniform", 2, "all").layer_set(3) == frozenset({0, 1, 2})
    with pytest.raises(SettingError, match="outside 0..27"):
        KVCompress.from_text("uniform", 2, "20-30").layer_set(28)
    with pytest.raises(SettingError, match="is not a number"):
        parse_layers("a-b")


@pytest.mark.parametrize(
    "text,depth,expected",
    [
        ("auto", 28, range(14, 28)),
        (" Auto ", 3, range(1, 3)),
        ("", 4, range(2, 4)),
        ("all", 28, range(28)),
        ("ALL", 5, range(5)),
        ("0,2,4-6", 28, [0, 2, 4, 5, 6]),
    ],
)
def test_layers_auto_all_and_explicit_follow_the_depth(text, depth, expected):
    kv = KVCompress.from_text("avgpool", 2, text)
    assert kv.layer_set(depth) == frozenset(expected)
    assert kv == KVCompress("avgpool", 2, parse_layers(text))
    model = PixArtTransformer(tiny_config(depth=depth), kv_compress=kv)
    assert [i for i, block in enumerate(model.blocks) if block.attn.kv_compress is kv] == sorted(expected)


def test_layers_are_checked_once_against_the_real_depth_with_the_setting_named():
    """Syntax when the text is read; range only when a model of known depth takes the setting."""
    with pytest.raises(SettingError, match=r"KV layers '14-x': '14-x' is not a number"):
        KVCompress.from_text("avgpool", 2, "14-x")
    with pytest.raises(SettingError, match=r"KV layers '9-3': '9-3' is outside"):
        parse_layers("9-3")
    with pytest.raises(SettingError, match="KVCompress.layers must be one of"):
        KVCompress("avgpool", 2, "half")
    late = KVCompress.from_text("avgpool", 2, "1,40")  # fine as text: no depth is known yet
    assert late.layers == (1, 40) and KVCompress("avgpool", 2, None).layers == "auto"
    model = PixArtTransformer(tiny_config(depth=3))
    with pytest.raises(SettingError, match=r"KVCompress.layers \[40\] are outside 0..2 for a 3-block model"):
        model.set_kv_compress(late)
    assert model.kv_compress is None and all(block.attn.kv_compress is None for block in model.blocks)


@pytest.mark.parametrize("mode", ["uniform", "ave", "avgpool"])
def test_compressed_tokens_are_row_major(mode):
    """Keys/values reach attention with unit stride along channels, so SDPA can use its fused kernels."""
    out = compress_kv(torch.randn(2, 9 * 15, 6), (9, 15), mode, 2, "keep")
    assert out.is_contiguous()
