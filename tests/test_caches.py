"""Step caches equal their reference code: T-GATE = tgate's TgatePixArtSigmaLoader, DBCache = cache-dit, on tiny
PixArt-Sigma models with the same weights, prompt embeddings, noise and DPM-Solver++ schedule."""

import logging
from functools import partial

import pytest
import torch
from cache_fixtures import pipeline_kwargs, prompts, reference_pipeline, sample
from dit_fixtures import inputs, max_rel_error, tiny_config

from pixart import KVCompress, PixArtTransformer
from pixart.caches import DBCache, DBCacheConfig, TGate, TGateConfig, step_plan

TOL = 1e-4
STEPS = 10


def _tgate_reference(tiny_models, depth, p, config: TGateConfig, monkeypatch):
    """tgate's latents, the (cross, self, keep_shape) settings it registered per step and each call's batch."""
    tgate = pytest.importorskip("tgate")
    import tgate.PixArt_Sigma as tgate_sigma

    _, reference, ours = tiny_models(depth=depth)
    registered, batches = [], []
    original = tgate_sigma.register_forward

    def spy(model, name, ca_kward, sa_kward, keep_shape):
        registered.append((dict(ca_kward), dict(sa_kward), keep_shape))
        return original(model, name, ca_kward=ca_kward, sa_kward=sa_kward, keep_shape=keep_shape)

    monkeypatch.setattr(tgate_sigma, "register_forward", spy)
    reference.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    pipe = tgate.TgatePixArtSigmaLoader(reference_pipeline(reference))
    settings = {k: getattr(config, k) for k in ("gate_step", "sp_interval", "fi_interval", "warm_up")}
    latents = pipe.tgate(**pipeline_kwargs(p, STEPS), **settings).images
    return latents, registered[1:], batches, ours  # registered[0]: the reset before the loop


def _as_plan(ca, sa, keep_shape):
    def kind(kwargs):
        return "keep" if kwargs["cache"] else "reuse" if kwargs["reuse"] else "compute"

    return kind(ca), kind(sa), not keep_shape


@pytest.mark.parametrize(
    "config",
    [
        TGateConfig(gate_step=5, sp_interval=5, fi_interval=1, warm_up=2),
        TGateConfig(gate_step=7, sp_interval=3, fi_interval=2, warm_up=1),
        TGateConfig(gate_step=2, sp_interval=2, fi_interval=3, warm_up=0),  # reuses in 9 of 10 steps
    ],
    ids=["defaults-gate5", "sp3-fi2", "gate2-most-reused"],
)
def test_tgate_equals_reference(config, monkeypatch, tiny_models):
    p = prompts()
    expected, registered, batches, ours = _tgate_reference(tiny_models, 3, p, config, monkeypatch)
    assert [_as_plan(*r) for r in registered] == [
        (s.cross, s.self_, s.mean_of_halves) for s in (step_plan(config, i) for i in range(STEPS))
    ]
    cache = TGate(config)
    got = sample(ours, p, STEPS, cache)
    assert max_rel_error(got, expected) <= TOL
    assert batches == [4 if cache.guided(i) else 2 for i in range(STEPS)]  # single (negative) batch after the gate
    assert cache.stats.steps == STEPS and cache.stats.reused_steps == [
        i for i in range(STEPS) if "reuse" in (step_plan(config, i).cross, step_plan(config, i).self_)
    ]


def test_tgate_disabled_equals_uncached(tiny_models):
    """gate_step = steps with self-attention recomputed every step (sp_interval 1) is the uncached model, exactly."""
    p = prompts()
    *_, ours = tiny_models(depth=3)
    cache = TGate(TGateConfig(gate_step=STEPS, sp_interval=1))
    assert torch.equal(sample(ours, p, STEPS, cache), sample(ours, p, STEPS))
    assert cache.stats.reused_steps == []


def _cache_dit_reference(tiny_models, depth, p, config: DBCacheConfig):
    cache_dit = pytest.importorskip("cache_dit")
    _, reference, ours = tiny_models(depth=depth)
    pipe = reference_pipeline(reference)
    names = [f.name for f in config.__dataclass_fields__.values()]
    cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(**{n: getattr(config, n) for n in names}))
    try:
        latents = pipe(**pipeline_kwargs(p, STEPS)).images
        stats = cache_dit.summary(pipe, logging=False)[0]
    finally:
        cache_dit.disable_cache(pipe)
    return latents, stats, ours


DBCACHE_SETTINGS = [
    DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.37, max_warmup_steps=2),
    DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=1),
    DBCacheConfig(
        Fn_compute_blocks=1,
        Bn_compute_blocks=0,
        residual_diff_threshold=1.0,
        max_warmup_steps=2,
        max_continuous_cached_steps=3,
    ),
    DBCacheConfig(
        Fn_compute_blocks=2,
        Bn_compute_blocks=1,
        residual_diff_threshold=1.0,
        max_warmup_steps=3,
        warmup_interval=2,
        max_cached_steps=6,
    ),
    DBCacheConfig(
        Fn_compute_blocks=1,
        Bn_compute_blocks=0,
        residual_diff_threshold=0.6,
        max_warmup_steps=1,
        max_accumulated_residual_diff_threshold=1.0,
    ),
]


@pytest.mark.parametrize(
    "config", DBCACHE_SETTINGS, ids=["F1B0-r0.37", "F1B1-r0.5", "F1B0-always-mc3", "F2B1-i2-m6", "F1B0-acc1"]
)
def test_dbcache_equals_cache_dit(config, tiny_models):
    p = prompts()
    expected, stats, ours = _cache_dit_reference(tiny_models, 4, p, config)
    cache = DBCache(config)
    got = sample(ours, p, STEPS, cache)
    assert cache.stats.reused_steps == stats.cached_steps
    assert cache.stats.reused_steps  # every setting here reuses some steps
    assert sorted(cache.stats.residual_diffs) == sorted(int(k) for k in stats.residual_diffs)
    for step, diff in cache.stats.residual_diffs.items():
        assert diff == pytest.approx(stats.residual_diffs[str(step)], rel=1e-4, abs=1e-6)
    assert max_rel_error(got, expected) <= TOL
    middle = 4 - config.Fn_compute_blocks - config.Bn_compute_blocks
    assert cache.stats.blocks_computed == 4 * STEPS - middle * len(stats.cached_steps)


def test_dbcache_threshold_zero_equals_uncached(tiny_models):
    p = prompts()
    *_, ours = tiny_models(depth=4)
    cache = DBCache(DBCacheConfig(Fn_compute_blocks=1, residual_diff_threshold=0.0, max_warmup_steps=0))
    assert torch.equal(sample(ours, p, STEPS, cache), sample(ours, p, STEPS))
    assert cache.stats.reused_steps == [] and cache.stats.blocks_computed == 4 * STEPS


@pytest.mark.parametrize(
    "make", [lambda: TGate(TGateConfig(gate_step=3)), lambda: DBCache(DBCacheConfig(1, 0, 1.0, 2))]
)
def test_state_resets_between_generations(make, tiny_models):
    p, (*_, ours) = prompts(), tiny_models(depth=3)
    cache = make()
    first = sample(ours, p, STEPS, cache)
    stats = cache.stats
    assert stats.reused_steps
    other = prompts(seed=9)
    sample(ours, other, STEPS, cache)
    assert torch.equal(sample(ours, p, STEPS, cache), first)
    assert cache.stats == stats


def test_steps_must_count_up():
    cache = DBCache(DBCacheConfig(1, 0))
    cache.begin_step(0)
    with pytest.raises(ValueError, match="step 2 follows step 0"):
        cache.begin_step(2)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="gate_step must be >= 1"):
        TGateConfig(gate_step=0)
    with pytest.raises(ValueError, match="Fn_compute_blocks must be >= 1"):
        DBCacheConfig(Fn_compute_blocks=0)
    cache = DBCache(DBCacheConfig(Fn_compute_blocks=3, Bn_compute_blocks=2))
    cache.begin_step(0)
    with pytest.raises(ValueError, match="exceed the model's 4 blocks"):
        cache.forward_kwargs(4)


# The attention hooks of the blocks themselves: computing changes nothing, kept outputs fed back reproduce the call.


def _attention_hooks(attend):
    """Block hooks that hand block ``index`` the attention hook ``attend(index, kind, rows, compute)``."""

    def hook(index, x, inputs, run):
        return run(x, inputs._replace(attention=partial(attend, index)))

    return [hook]


@pytest.mark.parametrize("chunk", [None, 5], ids=["whole", "token-chunked"])
@pytest.mark.parametrize("kv", [None, KVCompress("avgpool", 2)], ids=["plain", "kv-compressed"])
def test_attention_hooks_off_and_round_trip_are_exact(chunk, kv):
    torch.manual_seed(0)
    model = PixArtTransformer(tiny_config(depth=3), kv_compress=kv, token_chunk=chunk).eval()
    x, t, y, mask = inputs(model.config, 8, 10, batch=3)  # a different caption length per sample
    kept = {}

    def keep(index, kind, rows, compute):
        out = compute()
        kept.setdefault((index, kind), out.new_empty(rows.shape))[rows.index] = out
        return out

    def given(index, kind, rows, compute):
        return kept[(index, kind)][rows.index]

    with torch.no_grad():
        plain = model(x, t, y, mask)
        computed = model(x, t, y, mask, block_hooks=_attention_hooks(lambda index, kind, rows, compute: compute()))
        assert torch.equal(computed, plain)
        assert torch.equal(model(x, t, y, mask, block_hooks=_attention_hooks(keep)), plain)
        assert sorted(kept) == [(i, kind) for i in range(3) for kind in ("cross", "self")]
        assert all(out.shape == (3, 20, 96) for out in kept.values())
        assert torch.equal(model(x, t, y, mask, block_hooks=_attention_hooks(given)), plain)
        other = torch.randn_like(y)  # the caption no longer matters once cross-attention is supplied
        assert torch.equal(model(x, t, other, mask, block_hooks=_attention_hooks(given)), plain)


def test_tgate_token_chunks_agree_with_whole_sequence(tiny_models):
    p = prompts()
    *_, ours = tiny_models(depth=3)
    config = TGateConfig(gate_step=4, sp_interval=2)
    ours.token_chunk = None
    whole = sample(ours, p, STEPS, TGate(config))
    ours.token_chunk = 24  # 64 tokens: chunks of 24, 24, 16
    assert max_rel_error(sample(ours, p, STEPS, TGate(config)), whole) <= 1e-5


def test_tgate_hook_needs_a_forward_prepared_for_every_block():
    model = PixArtTransformer(tiny_config(depth=2)).eval()
    x, t, y, mask = inputs(model.config, 8, 8)
    cache = TGate(TGateConfig())
    cache.begin_step(0)
    with torch.no_grad(), pytest.raises(ValueError, match="block 1 of a forward prepared for 1 blocks"):
        model(x, t, y, mask, **cache.forward_kwargs(1))


@pytest.fixture(autouse=True)
def _quiet_references():
    logging.getLogger("cache_dit").setLevel(logging.WARNING)
    yield
