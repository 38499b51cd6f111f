"""Token-chunked inference (``PixArtBlock.forward`` with ``token_chunk``) gives the whole-sequence result, matches
diffusers, and is what "auto" runs on CPU."""

import pytest
import torch
from dit_fixtures import inputs, max_rel_error, reference_forward, tiny_config

from pixart import KVCompress, PixArtTransformer
from pixart import model as model_module

TOL = 1e-5


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000], ids=["one-token", "uneven", "even", "larger-than-sequence"])
@pytest.mark.parametrize("micro", [False, True], ids=["sigma", "alpha-micro"])
def test_chunked_forward_matches_diffusers_and_whole(chunk, micro, tiny_models):
    """A batch of three captions of different lengths (per-sample masks) on a non-square grid of 9×15 tokens."""
    config, reference, ours = tiny_models(micro)
    x, t, y, mask = inputs(config, 18, 30, batch=3)
    with torch.no_grad():
        ours.token_chunk = None
        whole = ours(x, t, y, mask)
        ours.token_chunk = chunk
        chunked = ours(x, t, y, mask)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    assert max_rel_error(chunked, reference_forward(reference, x, t, y, mask, micro)) <= TOL


@pytest.mark.parametrize("kv", [KVCompress("avgpool", 2), KVCompress("uniform", 2, layers=(0, 1))])
def test_chunked_forward_with_kv_compression_equals_whole(kv, tiny_models):
    _, _, ours = tiny_models(kv=kv)
    x, t, y, mask = inputs(ours.config, 18, 30)
    with torch.no_grad():
        ours.token_chunk = None
        whole = ours(x, t, y, mask)
        ours.token_chunk = 10
        torch.testing.assert_close(ours(x, t, y, mask), whole, rtol=1e-6, atol=1e-6)


def test_chunked_fp16_keeps_the_guard():
    """The in-place residual updates of the chunks saturate at ±65504 like the whole-sequence path."""
    torch.manual_seed(0)
    model = PixArtTransformer(tiny_config(), dtype=torch.float16, compute_dtype=torch.float16, token_chunk=5).eval()
    with torch.no_grad():
        model.blocks[-1].mlp.fc2.bias.fill_(60000.0)
        model.blocks[-1].scale_shift_table[5].fill_(4.0)
    x, t, y, mask = inputs(model.config, 16, 16)
    with torch.no_grad():
        chunked = model(x, t, y, mask)
        model.token_chunk = None
        whole = model(x, t, y, mask)
    assert torch.isfinite(chunked).all()
    torch.testing.assert_close(chunked, whole)


def _record_chunks(monkeypatch) -> list:
    """The ``token_chunk`` of every block call that chunks its per-token work."""
    seen = []
    original = model_module.token_rows

    def spy(shape, chunk):
        if chunk is not None:
            seen.append(chunk)
        return original(shape, chunk)

    monkeypatch.setattr(model_module, "token_rows", spy)
    return seen


def test_auto_chunks_on_cpu_at_inference_only(monkeypatch):
    seen = _record_chunks(monkeypatch)
    model = PixArtTransformer(tiny_config()).eval()
    assert model.token_chunk == "auto"
    x, t, y, mask = inputs(model.config, 16, 16)
    with torch.no_grad():
        model(x, t, y, mask)
    assert seen == [model_module.CPU_TOKEN_CHUNK] * model.config.depth
    seen.clear()
    out = model(x, t, y, mask)  # autograd on: the whole-sequence path, out of place
    out.sum().backward()
    assert seen == [] and model.blocks[0].attn.qkv.weight.grad is not None
    model.token_chunk = None
    with torch.no_grad():
        model(x, t, y, mask)
    assert seen == []


@pytest.mark.parametrize("bad", [0, -3, 2.5, "all"])
def test_bad_token_chunk_is_refused(bad):
    with pytest.raises(ValueError, match=r'token_chunk must be an int >= 1, None or "auto", got'):
        PixArtTransformer(tiny_config(), token_chunk=bad)
