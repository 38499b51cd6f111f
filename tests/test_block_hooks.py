"""Block hooks: the one place caches, ComfyUI block patches and cancel checks reach into the block stack."""

import pytest
import torch
from dit_fixtures import inputs, tiny_config

from pixart import PixArtTransformer


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return PixArtTransformer(tiny_config(depth=3)).eval()


def _manual_forward(model, x, t, y, mask, skip: int | None = None):
    """The forward pass written out by hand from the model's parts, leaving out block ``skip``."""
    b, _, height, width = x.shape
    p, cfg = model.config.patch_size, model.config
    grid = (height // p, width // p)
    temb = model._embed_timestep(t, x, None, None)
    tokens = model.x_embedder(x) + model.pos_embed(*grid, x.device, x.dtype)
    t0 = model.t_block(temb)
    caption, bias = model._caption_bias(y, mask)
    caption = model.y_embedder(caption)
    for index, block in enumerate(model.blocks):
        if index != skip:
            tokens = block(tokens, caption, t0, grid, bias, None)
    out = model.final_layer(tokens, temb).view(b, *grid, p, p, cfg.out_channels)
    return torch.einsum("bhwpqc->bchpwq", out).reshape(b, cfg.out_channels, height, width)


@pytest.mark.parametrize("chunk", [None, 5])
def test_pass_through_hooks_change_nothing(model, chunk):
    model.token_chunk = chunk
    x, t, y, mask = inputs(model.config, 8, 10)
    seen = []

    def outer(index, tokens, shared, run):
        seen.append(("outer", index, shared.grid))
        return run(tokens)

    def inner(index, tokens, shared, run):
        seen.append(("inner", index, shared.grid))
        return run(tokens)

    with torch.no_grad():
        plain = model(x, t, y, mask)
        hooked = model(x, t, y, mask, block_hooks=[outer, inner])
    assert torch.equal(plain, hooked)
    assert seen == [(name, i, (4, 5)) for i in range(3) for name in ("outer", "inner")]


def test_a_hook_can_skip_a_block(model):
    x, t, y, mask = inputs(model.config, 8, 8)

    def skip_block_1(index, tokens, shared, run):
        return tokens if index == 1 else run(tokens)

    with torch.no_grad():
        skipped = model(x, t, y, mask, block_hooks=[skip_block_1])
        torch.testing.assert_close(skipped, _manual_forward(model, x, t, y, mask, skip=1), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(skipped, model(x, t, y, mask))


def test_hooks_see_the_shared_inputs(model):
    x, t, y, mask = inputs(model.config, 8, 8, tokens=7)  # sample 0 keeps 7 caption tokens, sample 1 keeps 4
    mask[0, 5:] = 0  # now 5 and 4: tokens 5 and 6 are masked in every sample and dropped before the blocks
    shapes = []

    def record(index, tokens, shared, run):
        shapes.append((tuple(tokens.shape), tuple(shared.y.shape), tuple(shared.t0.shape), shared.bias is not None))
        return run(tokens)

    with torch.no_grad():
        model(x, t, y, mask, block_hooks=[record])
    c = model.config.hidden_size
    assert shapes == [((2, 16, c), (2, 5, c), (2, 6 * c), True)] * 3


def test_an_exception_in_a_hook_stops_the_forward(model):
    """How a cancel check works: the hook raises before the block runs."""
    x, t, y, mask = inputs(model.config, 8, 8)
    ran = []

    def cancel_at_2(index, tokens, shared, run):
        if index == 2:
            raise InterruptedError("cancelled")
        ran.append(index)
        return run(tokens)

    with torch.no_grad(), pytest.raises(InterruptedError):
        model(x, t, y, mask, block_hooks=[cancel_at_2])
    assert ran == [0, 1]


@pytest.mark.parametrize("chunk", [None, 5], ids=["whole", "token-chunked"])
def test_a_hook_may_keep_its_input_and_the_block_output_without_cloning(model, chunk):
    """The block never changes the tokens it is given: kept inputs and outputs stay what they were."""
    model.token_chunk = chunk
    x, t, y, mask = inputs(model.config, 8, 10)
    kept, copies = [], []

    def keep(index, tokens, shared, run):
        out = run(tokens)
        kept.append((tokens, out))
        copies.append((tokens.clone(), out.clone()))
        return out

    with torch.no_grad():
        hooked = model(x, t, y, mask, block_hooks=[keep])
        assert torch.equal(hooked, model(x, t, y, mask))
    for (tokens, out), (tokens_then, out_then) in zip(kept, copies, strict=True):
        assert torch.equal(tokens, tokens_then) and torch.equal(out, out_then)
    for (_, out), (following, _) in zip(kept, kept[1:], strict=False):
        assert following is out  # the next block got this output itself, and did not change it


def test_a_hook_may_run_the_block_on_other_inputs(model):
    """``run(x, inputs)`` runs the block (and the hooks inside) on other shared inputs, as ComfyUI's block
    replacements' ``original_block`` does with the ``txt`` and ``vec`` it is given."""
    x, t, y, mask = inputs(model.config, 8, 8)
    seen = []

    def zero_caption_on_1(index, tokens, shared, run):
        return run(tokens, shared._replace(y=torch.zeros_like(shared.y))) if index == 1 else run(tokens)

    def inner(index, tokens, shared, run):
        seen.append(bool(shared.y.any()))
        return run(tokens)

    with torch.no_grad():
        got = model(x, t, y, mask, block_hooks=[zero_caption_on_1, inner])
        b, _, height, width = x.shape
        grid = (height // 2, width // 2)
        temb = model._embed_timestep(t, x, None, None)
        tokens = model.x_embedder(x) + model.pos_embed(*grid, x.device, x.dtype)
        t0 = model.t_block(temb)
        caption, bias = model._caption_bias(y, mask)
        caption = model.y_embedder(caption)
        for index, block in enumerate(model.blocks):
            tokens = block(tokens, torch.zeros_like(caption) if index == 1 else caption, t0, grid, bias, None)
        expected = model.final_layer(tokens, temb).view(b, *grid, 2, 2, model.config.out_channels)
        expected = torch.einsum("bhwpqc->bchpwq", expected).reshape(b, -1, height, width)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert seen == [True, False, True]
