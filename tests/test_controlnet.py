"""PixArt ControlNet-Transformer: zero projections change nothing; random weights match the official data flow
(assembled here from the base model's own blocks and explicit copies) and, for the diffusers adapter layout,
diffusers' PixArtTransformer2DModel blocks driven in that flow; alpha-MS and Sigma, with KV compression and token
chunking on."""

from __future__ import annotations

import copy

import pytest
import torch
from dit_fixtures import inputs, max_rel_error, official_state_dict, reference_model, tiny_config
from torch import nn

from pixart import KVCompress, PixArtTransformer
from pixart.controlnet import PixArtControlNet, add_to_block_inputs, control_hook, control_residuals
from pixart.controlnet.files import check_against_controlnet, controlnet_config
from scripts.tiny_controlnet import adapter_state_dict, controlnet_state_dict

DEPTH, COPIES = 4, 2  # residuals go to blocks 1 and 2; block 3 runs unchanged
TOL = 1e-5


def _base(micro: bool, seed: int = 0, **model_kwargs) -> PixArtTransformer:
    config = tiny_config(micro, depth=DEPTH)
    model = PixArtTransformer(config, **model_kwargs).eval()
    model.load_state_dict(official_state_dict(reference_model(config, seed), config, training_extras=False))
    return model


def _controlnet(base: PixArtTransformer, seed: int = 1, zero: bool = False) -> PixArtControlNet:
    state = controlnet_state_dict(base.state_dict(), COPIES, seed=seed, scale=0.05, zero_projections=zero)
    config = controlnet_config(state, "test", num_heads=base.config.num_heads)
    check_against_controlnet(state, config, "test")
    model = PixArtControlNet(config).eval()
    model.load_state_dict(state)
    return model


def _hint(base: PixArtTransformer, x: torch.Tensor, seed: int = 5) -> torch.Tensor:
    return torch.randn(x.shape[0], base.config.in_channels, *x.shape[2:], generator=torch.Generator().manual_seed(seed))


def _official_reference(base, controlnet, x, t, y, mask, hint, scale: float = 1.0) -> torch.Tensor:
    """ControlPixArtHalf's forward written out with the base's parts and explicit copies (deep copies of the
    ControlNet's blocks and its projections as plain modules)."""
    b, _, height, width = x.shape
    cfg, p = base.config, base.config.patch_size
    grid = (height // p, width // p)
    copies = [copy.deepcopy(c.copied_block) for c in controlnet.controlnet]
    for i, block in enumerate(copies):
        block.attn.kv_compress = base.blocks[i].attn.kv_compress  # a copy of block i is compressed as block i
    before = copy.deepcopy(controlnet.controlnet[0].before_proj)
    after = [copy.deepcopy(c.after_proj) for c in controlnet.controlnet]
    temb = base._embed_timestep(t, x, None, None)
    tokens = base.x_embedder(x) + base.pos_embed(*grid, x.device, x.dtype)
    c = base.x_embedder(hint) + base.pos_embed(*grid, x.device, x.dtype)
    t0 = base.t_block(temb)
    caption, bias = base._caption_bias(y, mask)
    caption = base.y_embedder(caption)
    tokens = base.blocks[0](tokens, caption, t0, grid, bias, None)
    c = before(c)
    for index in range(1, len(base.blocks)):
        if index <= len(copies):
            c = copies[index - 1]((tokens + c) if index == 1 else c, caption, t0, grid, bias, None)
            tokens = tokens + scale * after[index - 1](c)
        tokens = base.blocks[index](tokens, caption, t0, grid, bias, None)
    out = base.final_layer(tokens, temb).view(b, *grid, p, p, cfg.out_channels)
    return torch.einsum("bhwpqc->bchpwq", out).reshape(b, cfg.out_channels, height, width)


@pytest.mark.parametrize("micro", [False, True], ids=["sigma", "alpha-ms"])
@pytest.mark.parametrize("chunk", [None, 5], ids=["whole", "chunked"])
def test_zero_projections_give_the_base_output_bit_for_bit(micro, chunk):
    base = _base(micro, token_chunk=chunk)
    controlnet = _controlnet(base, zero=True)
    x, t, y, mask = inputs(base.config, 8, 10)
    hint = _hint(base, x)
    with torch.no_grad():
        plain = base(x, t, y, mask)
        hooked = base(x, t, y, mask, block_hooks=[control_hook(controlnet, base, hint)])
        residuals = control_residuals(controlnet, base, hint, x, t, y, mask)
        added = base(x, t, y, mask, block_hooks=[add_to_block_inputs(dict(enumerate(residuals, start=1)))])
    assert len(residuals) == COPIES and all(not r.any() for r in residuals)
    assert torch.equal(hooked, plain) and torch.equal(added, plain)


@pytest.mark.parametrize("micro", [False, True], ids=["sigma", "alpha-ms"])
@pytest.mark.parametrize(
    "kv, chunk",
    [(None, None), (KVCompress("avgpool", 2, tuple(range(DEPTH))), 5), (KVCompress("uniform", 2, (1, 3)), 7)],
    ids=["plain", "kv-all-chunked", "kv-some-chunked"],
)
def test_random_controlnet_matches_the_official_data_flow(micro, kv, chunk):
    base = _base(micro, kv_compress=kv, token_chunk=chunk)
    controlnet = _controlnet(base)
    x, t, y, mask = inputs(base.config, 8, 12)
    hint = _hint(base, x)
    with torch.no_grad():
        expected = _official_reference(base, controlnet, x, t, y, mask, hint)
        plain = base(x, t, y, mask)
        ours = base(x, t, y, mask, block_hooks=[control_hook(controlnet, base, hint)])
        residuals = control_residuals(controlnet, base, hint, x, t, y, mask)
        added = base(x, t, y, mask, block_hooks=[add_to_block_inputs(dict(enumerate(residuals, start=1)))])
    assert max_rel_error(ours, expected) <= TOL
    assert max_rel_error(added, expected) <= TOL
    assert max_rel_error(plain, expected) > 1e-3  # the control changes the output


def test_scale_and_two_controlnets_add():
    base = _base(False)
    first, second = _controlnet(base, seed=1), _controlnet(base, seed=2)
    x, t, y, mask = inputs(base.config, 8, 8)
    h1, h2 = _hint(base, x, 5), _hint(base, x, 6)
    with torch.no_grad():
        scaled = base(x, t, y, mask, block_hooks=[control_hook(first, base, h1, scale=0.4)])
        assert max_rel_error(scaled, _official_reference(base, first, x, t, y, mask, h1, scale=0.4)) <= TOL
        both = base(x, t, y, mask, block_hooks=[control_hook(first, base, h1), control_hook(second, base, h2)])
        r1 = control_residuals(first, base, h1, x, t, y, mask)
        r2 = control_residuals(second, base, h2, x, t, y, mask)
        summed = {i + 1: a + b for i, (a, b) in enumerate(zip(r1, r2, strict=True))}
        added = base(x, t, y, mask, block_hooks=[add_to_block_inputs(summed)])
    assert max_rel_error(both, added) <= TOL


def _diffusers_control_forward(reference, adapter, x, t, y, mask, hint, micro):
    """diffusers' PixArtTransformer2DModel parts and BasicTransformerBlock copies driven as the research project's
    PixArtControlNetTransformerModel drives them (adapter: list of (block, before_proj or None, after_proj))."""
    b, _, height, width = x.shape
    p = reference.config.patch_size
    cond = {"resolution": None, "aspect_ratio": None}
    if micro:
        cond = {
            "resolution": torch.tensor([[8.0 * height, 8.0 * width]]).repeat(b, 1),
            "aspect_ratio": torch.tensor([[height / width]]).repeat(b, 1),
        }
    bias = ((1 - mask) * -10000.0)[:, None]
    hidden = reference.pos_embed(x)
    timestep, embedded = reference.adaln_single(t, cond, batch_size=b, hidden_dtype=hidden.dtype)
    caption = reference.caption_projection(y).view(b, -1, hidden.shape[-1])
    control = reference.pos_embed(hint)
    for index, block in enumerate(reference.transformer_blocks):
        if 1 <= index <= len(adapter):
            copied, before, after = adapter[index - 1]
            if before is not None:
                control = hidden + before(control)
            control = copied(control, encoder_hidden_states=caption, timestep=timestep, encoder_attention_mask=bias)
            hidden = hidden + after(control)
        hidden = block(hidden, encoder_hidden_states=caption, timestep=timestep, encoder_attention_mask=bias)
    shift, scale = (reference.scale_shift_table[None] + embedded[:, None]).chunk(2, dim=1)
    hidden = reference.proj_out(reference.norm_out(hidden) * (1 + scale) + shift)
    c_out = reference.out_channels
    hidden = hidden.reshape(b, height // p, width // p, p, p, c_out)
    return torch.einsum("nhwpqc->nchpwq", hidden).reshape(b, c_out, height, width)


@pytest.mark.parametrize("micro", [False, True], ids=["sigma", "alpha-ms"])
def test_adapter_layout_matches_diffusers_blocks(micro):
    config = tiny_config(micro, depth=DEPTH)
    reference = reference_model(config, seed=3)
    torch.manual_seed(4)
    adapter = []
    for i in range(COPIES):
        block = copy.deepcopy(reference.transformer_blocks[i])
        with torch.no_grad():
            for param in block.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        before = nn.Linear(config.hidden_size, config.hidden_size) if i == 0 else None
        adapter.append((block, before, nn.Linear(config.hidden_size, config.hidden_size)))
    files = {}
    for i, (block, before, after) in enumerate(adapter):
        files |= {f"controlnet_blocks.{i}.transformer_block.{k}": v for k, v in block.state_dict().items()}
        files |= {f"controlnet_blocks.{i}.after_proj.{k}": v for k, v in after.state_dict().items()}
        if before is not None:
            files |= {f"controlnet_blocks.{i}.before_proj.{k}": v for k, v in before.state_dict().items()}
    from pixart.controlnet.files import _official_keys, _split

    state = _official_keys(*_split(files, "adapter"), "adapter")
    assert adapter_state_dict(state).keys() == files.keys()  # the writer inverts the reader
    cn_config = controlnet_config(state, "adapter", num_heads=config.num_heads)
    controlnet = PixArtControlNet(cn_config).eval()
    controlnet.load_state_dict(state)
    base = PixArtTransformer(config, token_chunk=None).eval()
    base.load_state_dict(official_state_dict(reference, config, training_extras=False))
    x, t, y, mask = inputs(config, 8, 12)
    hint = _hint(base, x)
    with torch.no_grad():
        expected = _diffusers_control_forward(reference, adapter, x, t, y, mask, hint, micro)
        ours = base(x, t, y, mask, block_hooks=[control_hook(controlnet, base, hint)])
    assert max_rel_error(ours, expected) <= TOL


def test_a_controlnet_that_does_not_fit_the_base_is_refused():
    base = _base(False)
    state = controlnet_state_dict(base.state_dict(), DEPTH, seed=1)  # DEPTH copies: one more than blocks 1..3
    controlnet = PixArtControlNet(controlnet_config(state, "deep.pth", num_heads=3)).eval()
    x, t, y, mask = inputs(base.config, 8, 8)
    with pytest.raises(ValueError, match="4 block copies, the base model has only 3 blocks after block 0"):
        base(x, t, y, mask, block_hooks=[control_hook(controlnet, base, _hint(base, x))])
    one_copy = controlnet_state_dict(base.state_dict(), 1)
    wrong_heads = PixArtControlNet(controlnet_config(one_copy, "h.pth", 2), source="h.pth")
    with pytest.raises(
        ValueError, match="h.pth: this ControlNet does not fit.*2 attention heads, the base model has 3"
    ):
        base(x, t, y, mask, block_hooks=[control_hook(wrong_heads, base, _hint(base, x))])
    small = _hint(base, x)[..., :4]
    with pytest.raises(ValueError, match=r"hint latent \(2, 4, 8, 4\): expected \(B, 4, 8, 8\)"):
        base(x, t, y, mask, block_hooks=[control_hook(_controlnet(base), base, small)])


def test_the_control_hook_leaves_the_tokens_of_outer_hooks_alone():
    """Step caches keep the tokens they pass inwards (no copy): adding the residuals must not change them."""
    base = _base(False)
    controlnet = _controlnet(base)
    x, t, y, mask = inputs(base.config, 8, 8)
    kept = {}

    def keep(index, tokens, shared, run):
        kept[index] = (tokens, tokens.clone())
        return run(tokens)

    with torch.no_grad():
        base(x, t, y, mask, block_hooks=[keep, control_hook(controlnet, base, _hint(base, x))])
    assert all(torch.equal(tokens, copy) for tokens, copy in kept.values())
