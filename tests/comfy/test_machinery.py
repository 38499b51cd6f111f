"""Our MODEL inside ComfyUI's machinery (marker ``comfy``), in the session's ComfyUI: DIFFUSION_MODEL wrappers,
``patches_replace`` block patches, EasyCache, SkipLayerGuidanceDiT, deep clones (MultiGPU), Cancel between blocks,
ComfyUI's attention backends and its memory manager holding our T5; the numbers are compared with ``pixart`` run
directly."""

from __future__ import annotations

import copy
import logging
from functools import partial

import pytest
from model_setup import CFG, STEPS, WIDTH, Setup
from node_calls import assert_close, node_result

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def s(comfyui, tmp_path_factory) -> Setup:
    return Setup(comfyui, tmp_path_factory.mktemp("machinery"))


# --- checks ---------------------------------------------------------------------------------------------------------


def test_wrapper_sees_every_call(s: Setup) -> None:
    """A DIFFUSION_MODEL wrapper sees each model call with our inputs and may change the output."""
    import comfy.patcher_extension

    torch = s.torch
    plain = s.sample(s.model())
    model = s.model()
    seen, calls = [], []
    model.model.diffusion_model.register_forward_pre_hook(lambda module, args: calls.append(1))

    def wrapper(executor, x, timesteps, context, caption_mask, c_size, c_ar, transformer_options, **kwargs):
        seen.append(
            (tuple(x.shape), tuple(context.shape), caption_mask.sum(1).tolist(), "sigmas" in transformer_options)
        )
        return executor(x, timesteps, context, caption_mask, c_size, c_ar, transformer_options, **kwargs)

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", wrapper)
    wrapped = s.sample(model)
    assert torch.equal(wrapped, plain), "a pass-through wrapper changed the result"
    assert len(seen) == len(calls) >= STEPS, (len(seen), len(calls))
    for x_shape, context_shape, kept, has_sigmas in seen:
        assert x_shape == (2, 4, 32, 32) and context_shape == (2, 300, 4096), (x_shape, context_shape)
        assert sorted(kept) == [4.0, 9.0] and has_sigmas, (kept, has_sigmas)

    def negate(executor, *args, **kwargs):
        return -executor(*args, **kwargs)

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "negate", negate)
    assert not torch.allclose(s.sample(model), plain), "a wrapper's output was ignored"


def test_skip_layer_guidance(s: Setup) -> None:
    """SkipLayerGuidanceDiT on block 0 (block 1 KV-compressed, token-chunked) equals CFG + scale * (cond - cond
    without block 0) computed with ``pixart``; with no layers it is the plain run."""
    import comfy_extras.nodes_slg as slg

    import pixart

    torch = s.torch
    model = s.model(pixart.KVCompress("avgpool", 2))
    model.model.diffusion_model.token_chunk = 100
    guided = node_result(
        slg.SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, double_layers="0", single_layers="", rescaling_scale=0)
    )
    got = s.sample(guided, steps=1)  # one Euler step from sigma_max: the result is the guided denoised latent
    ref = s.reference(pixart.KVCompress("avgpool", 2, None))
    sampling = model.get_model_object("model_sampling")
    sigma = sampling.sigma_max
    x = s.noise * torch.sqrt(1 + sigma**2)
    t = sampling.timestep(sigma).reshape(1)
    x_in = x / torch.sqrt(sigma**2 + 1)

    def denoised(caption, hooks=()):
        mask = torch.ones(caption.shape[:2])
        with torch.no_grad():
            return x - ref(x_in, t, caption, mask, block_hooks=hooks)[:, :4] * sigma

    def skip_0(index, tokens, inputs, run):
        return tokens if index == 0 else run(tokens)

    cond, uncond = denoised(s.pos), denoised(s.neg)
    want = uncond + CFG * (cond - uncond) + 3.0 * (cond - denoised(s.pos, [skip_0]))
    assert_close(got * sampling_scale(model), want, "SkipLayerGuidanceDiT on block 0")
    plain = s.sample(model, steps=1)
    assert_close(plain * sampling_scale(model), uncond + CFG * (cond - uncond), "plain run vs pixart CFG")
    assert (got - plain).abs().max() > 1e-3 * plain.abs().max(), "skipping block 0 changed nothing"
    unguided = node_result(slg.SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, "", "", 0))
    assert torch.equal(s.sample(unguided, steps=1), plain), "SkipLayerGuidanceDiT without layers changed the run"


def sampling_scale(model) -> float:
    return model.model.latent_format.scale_factor


def test_easycache(s: Setup, caplog) -> None:
    """EasyCache skips steps on our MODEL (its log) and changes the latent; at reuse_threshold 0 it is the plain run."""
    import comfy_extras.nodes_easycache as easycache

    torch = s.torch
    plain = s.sample(s.model(), steps=10)
    exact = node_result(easycache.EasyCacheNode.execute(s.model(), 0.0, 0.15, 0.95, False))
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert torch.equal(s.sample(exact, steps=10), plain), "EasyCache at reuse_threshold 0 changed the latent"
    cached = node_result(easycache.EasyCacheNode.execute(s.model(), 3.0, 0.0, 1.0, False))
    caplog.clear()
    got = s.sample(cached, steps=10)
    lines = [line for line in caplog.messages if "skipped" in line]
    assert lines, f"no EasyCache summary in the log: {caplog.messages[-5:]}"
    skipped = int(lines[-1].split("skipped ")[1].split("/")[0])
    assert skipped > 0, lines[-1]
    assert not torch.equal(got, plain), "EasyCache skipped steps but the latent is unchanged"


def test_deep_clone(s: Setup) -> None:
    """A deep clone of the MODEL's patcher (0.33's MultiGPU deepclone, else copy.deepcopy) gives identical outputs,
    with a block patch and a wrapper carried over."""
    import comfy_extras.nodes_slg as slg

    torch = s.torch
    model = node_result(slg.SkipLayerGuidanceDiT.execute(s.model(), 3.0, 0.0, 1.0, "1", "", 0))
    if hasattr(model, "deepclone_multigpu"):
        clone = model.deepclone_multigpu(new_load_device=torch.device("cpu"))
        assert clone.model is not model.model
    else:
        clone = model.clone()
        clone.model = copy.deepcopy(model.model)
    original = s.sample(model)
    assert torch.equal(s.sample(clone), original), "the deep clone differs"
    assert torch.equal(s.sample(model), original), "the original changed after cloning"


def test_cancel_between_blocks(s: Setup) -> None:
    """Cancel pressed while block 0 runs stops the forward before block 1."""
    import comfy.model_management as mm

    torch = s.torch
    dit = s.model().model.diffusion_model
    ran = []

    def cancel_in_block_0(args, extra):
        out = extra["original_block"](args)
        ran.append(0)
        mm.interrupt_current_processing(True)
        return out

    def block_1(args, extra):
        ran.append(1)
        return extra["original_block"](args)

    options = {"patches_replace": {"dit": {("double_block", 0): cancel_in_block_0, ("double_block", 1): block_1}}}
    caption, mask = torch.cat([s.pos, torch.zeros(1, 291, 4096)], 1), torch.ones(1, 300)
    try:
        dit(s.noise, torch.tensor([500.0]), caption, mask, transformer_options=options)
        raise AssertionError("the forward finished although Cancel was pressed")
    except mm.InterruptProcessingException:
        pass
    finally:
        mm.interrupt_current_processing(False)
    assert ran == [0], ran
    del options["patches_replace"]["dit"][("double_block", 0)]
    dit(s.noise, torch.tensor([500.0]), caption, mask, transformer_options=options)
    assert ran == [0, 1], ran


def test_block_patch_contract(s: Setup) -> None:
    """A block replacement gets img/txt/vec/transformer_options with block bookkeeping; its original_block leaves
    args["img"] intact, honours a changed txt and returns {"img"}; patched and unpatched forwards agree."""
    torch = s.torch
    dit = s.model().model.diffusion_model
    seen = []

    def probe(args, extra):
        img = args["img"].clone()
        out = extra["original_block"](args)
        assert torch.equal(args["img"], img), "original_block changed args['img'] in place"
        options = args["transformer_options"]
        seen.append((options["block_index"], options["total_blocks"], tuple(args["txt"].shape), args["vec"].shape))
        zero_txt = extra["original_block"]({**args, "txt": torch.zeros_like(args["txt"])})
        assert not torch.equal(zero_txt["img"], out["img"]), "original_block ignored args['txt']"
        return out

    caption, mask = (
        torch.cat([s.pos, torch.zeros(1, 291, 4096)], 1),
        torch.cat([torch.ones(1, 9), torch.zeros(1, 291)], 1),
    )
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = dit(s.noise, t, caption, mask)
        options = {"patches_replace": {"dit": {("double_block", 1): probe}}}
        patched = dit(s.noise, t, caption, mask, transformer_options=options)
    assert torch.equal(patched, plain), "a pass-through block patch changed the output"
    assert seen == [(1, 2, (1, 9, WIDTH), torch.Size([1, 6 * WIDTH]))], seen
    assert "block_index" not in options, "the forward wrote into the caller's transformer_options"


def test_attention_backends(s: Setup) -> None:
    """Our attention glue on each ComfyUI backend that runs on a CPU equals torch SDPA, for KV-compressed keys and
    caption masks of different lengths per sample; then a whole forward with each backend equals ``pixart``."""
    import comfy.ldm.modules.attention as attention

    import pixart
    from pixart.attention import sdpa_attention

    torch = s.torch
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g) for n in (64, 16, 16))
    keep = torch.arange(16)[None] < torch.tensor([[16], [7]])  # sample 0 keeps 16 keys, sample 1 keeps 7
    bias = torch.zeros(2, 16).masked_fill(~keep, float("-inf"))[:, None, None, :]
    backends = {name: getattr(attention, f"attention_{name}") for name in ("pytorch", "split", "sub_quad", "basic")}
    for name, backend in backends.items():
        for b in (None, bias):
            got = s.comfy_model.backend_attention(q, k, v, b, backend)
            assert_close(got, sdpa_attention(q, k, v, b), f"attention_{name}, mask {b is not None}")
    kv = pixart.KVCompress("avgpool", 2, None)
    ref = s.reference(kv)
    dit = s.model(kv).model.diffusion_model
    captions = torch.cat([torch.cat([s.pos, torch.zeros(1, 291, 4096)], 1)] * 2)
    masks = (torch.arange(300)[None] < torch.tensor([[9], [4]])).float()
    x, t = torch.cat([s.noise, -s.noise]), torch.tensor([500.0, 300.0])
    with torch.no_grad():
        want = ref(x, t, captions, masks)[:, :4]
        for name, backend in backends.items():
            for block in dit.blocks:
                block.attn.attention = block.cross_attn.attention = partial(
                    s.comfy_model.backend_attention, backend=backend
                )
            assert_close(dit(x, t, captions, masks), want, f"whole forward on attention_{name}")


def test_t5_in_memory_manager(s: Setup) -> None:
    """After PixArt Sigma Text Encode, ComfyUI's loaded models hold a patcher of our T5; "unload models" (what
    ``/free`` runs: ``unload_all_models``) takes it out; the next encode loads it again and gives the same states."""
    import comfy.model_management as mm
    from safetensors.torch import save_file

    from scripts import tiny_weights

    torch = s.torch
    from pixart.text_encoder import load_t5

    path = s.path.parent / "t5_narrow.safetensors"
    save_file(tiny_weights.t5_state_dict(d_model=64), str(path))
    tokenizer = s.comfyui.tokenizer()
    t5_model = s.comfyui.module("nodes.t5")
    text_encode = s.comfyui.module("nodes.t5")
    encoder = load_t5(path, tokenizer=tokenizer, dtype=torch.float32)
    t5 = t5_model.ManagedT5(encoder, mm.text_encoder_device(), mm.text_encoder_offload_device())

    def loaded():
        models = [m.model.model for m in mm.current_loaded_models if m.model is not None]
        return [model for model in models if getattr(model, "t5", None) is encoder.model]

    assert not loaded()
    first = node_result(text_encode.PixArtSigmaTextEncode.execute(t5, "A Red Fox", "sigma"))
    assert len(loaded()) == 1, [type(m.model.model).__name__ for m in mm.current_loaded_models]
    mm.unload_all_models()
    assert not loaded(), "unload models left the T5 loaded"
    again = node_result(text_encode.PixArtSigmaTextEncode.execute(t5, "a red fox", "sigma"))
    assert len(loaded()) == 1
    (states, extra), ((states_again, extra_again),) = first[0], again
    want, mask = load_t5(path, tokenizer=tokenizer, dtype=torch.float32).encode(["a red fox"], 300)
    assert torch.equal(states, states_again) and torch.equal(extra["attention_mask"], extra_again["attention_mask"])
    assert states.shape[1] == int(mask.sum()), (states.shape, mask.sum())
    assert_close(states, want[:, : states.shape[1]], "managed T5 vs pixart T5")
