"""PixArt Sigma Cache inside the session's ComfyUI (marker ``comfy``): the node on our MODEL with PixArt Sigma Sampler,
KSampler and SamplerCustomAdvanced (dpmpp_2m, sgm_uniform) equals ``pixart``'s step cache (``GuidedDenoiser`` +
``TGate`` / ``DBCache``) driven through ComfyUI's own DPM-Solver++ 2M on the same tiny weights, prompt states, noise
and sigmas (fp32 <= 1e-5 relative; the same setting shifted by one step differs by more than 10x that), reusing the
same steps (the node's log line carries ``CacheStats.summary``); disabled settings equal the plain run exactly; heun
(two calls per step) and LoRA weight patches run with it; T-GATE at CFG 1 refuses with a clear error.
"""

from __future__ import annotations

import logging
import math

import pytest
from node_calls import Collect, call, node_result, outputs, relative

pytestmark = pytest.mark.comfy

TOL = 1e-5  # fp32, ComfyUI's CFG on x_0 vs pixart's on epsilon
STEPS, CFG, SEED, DEPTH = 8, 4.5, 7, 3
WIDTH = 144  # C: 2 heads; a gate_step shifted by one differs by 1.4e-4 (1.7e-4 at 288 wide), ~300x the error
TGATE = {"gate_step": 5, "sp_interval": 3, "fi_interval": 1, "warm_up": 1}  # self reused at 2, cross from 5
FIRST_BLOCK = {"residual_diff_threshold": 1.0, "max_warmup_steps": 2, "max_continuous_cached_steps": 2}
DBCACHE = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 1, "residual_diff_threshold": 1.0, "max_warmup_steps": 3}


class Setup:
    """A tiny PixArt-Sigma file (DEPTH blocks, WIDTH wide), our MODEL of it, prompt states, the cache node and log
    records."""

    def __init__(self, comfyui, work, records: list[str]):
        import torch
        from safetensors.torch import save_file

        from scripts import tiny_weights

        self.torch, self.records = torch, records
        self.comfy_model = comfyui.module("nodes.dit.model")
        self.node = comfyui.module("nodes.cache").PixArtSigmaCache
        self.sampler_node = comfyui.module("nodes.sampler").PixArtSigmaSampler
        self.path = work / "tiny_sigma.safetensors"
        save_file(tiny_weights.dit_state_dict("sigma-1024", DEPTH, seed=3, hidden=WIDTH), str(self.path))
        g = torch.Generator().manual_seed(11)
        self.pos = torch.randn(1, 9, 4096, generator=g)
        self.neg = torch.randn(1, 4, 4096, generator=g)
        self.latent = {"samples": torch.zeros(1, 4, 32, 32)}

    def model(self):
        return self.comfy_model.load_model(self.path, "auto", self.torch.float32)

    def cached(self, model, method: str, **settings):
        """The node's MODEL: its defaults, with ``settings`` changed."""
        inputs = {i.id: i.default for i in self.node.define_schema().inputs if i.id != "model"}
        inputs.update(method=method, **settings)
        return node_result(self.node.execute(model, **inputs))

    def conds(self):
        ones = self.torch.ones
        return [[self.pos, {"attention_mask": ones(1, 9)}]], [[self.neg, {"attention_mask": ones(1, 4)}]]

    def sample(self, model, sampler: str = "dpmpp_2m", steps: int = STEPS):
        """PixArt Sigma Sampler -> the latent in the model's sampling scale, and the cache's log lines."""
        self.records.clear()
        positive, negative = self.conds()
        (out,) = outputs(
            self.sampler_node.execute(
                model, positive, negative, self.latent, SEED, steps, CFG, sampler, "sgm_uniform", 1.0
            )
        )
        return out["samples"] * model.model.latent_format.scale_factor, self.cache_lines()

    def cache_lines(self) -> list[str]:
        return [r for r in self.records if r.startswith("PixArt Sigma Cache")]

    def reference(self, cache, steps: int = STEPS):
        """``pixart``'s GuidedDenoiser with ``cache`` (a StepCache or None) as the x_0 model of ComfyUI's own
        DPM-Solver++ 2M, on ComfyUI's sgm_uniform sigmas, start noise and sigma <-> timestep map."""
        import comfy.k_diffusion.sampling as k_sampling
        import comfy.sample
        import comfy.samplers

        import pixart
        from pixart.caches import GuidedDenoiser

        torch = self.torch
        sampling = self.model().get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(sampling, "sgm_uniform", steps).float()
        noise = comfy.sample.prepare_noise(self.latent["samples"], SEED)
        dit = pixart.load_dit(self.path, "auto", torch.float32)
        negative = torch.cat([self.neg, torch.zeros(1, 5, 4096)], 1)  # the caption's length, padding masked
        negative_mask = torch.cat([torch.ones(1, 4), torch.zeros(1, 5)], 1)
        denoise = GuidedDenoiser(dit, self.pos, torch.ones(1, 9), negative, negative_mask, CFG, cache)
        calls = []

        def x0_model(x, sigma, **_):
            s = sigma.reshape(-1)[:1]
            t = sampling.timestep(s).float()
            eps = denoise(len(calls), x / torch.sqrt(s**2 + 1), t)
            calls.append(float(s))
            return x - eps * s

        s0 = float(sigmas[0])
        start = math.sqrt(1 + s0 * s0) if math.isclose(float(sampling.sigma_max), s0, rel_tol=1e-5) else s0
        with torch.no_grad():
            out = k_sampling.sample_dpmpp_2m(x0_model, noise * start, sigmas, disable=True)
        assert len(calls) == steps, calls
        return out


@pytest.fixture(scope="module")
def s(comfyui, tmp_path_factory):
    """The Setup, with the log's messages collected while the module runs."""
    records: list[str] = []
    handler = Collect(records)
    logging.getLogger().addHandler(handler)
    yield Setup(comfyui, tmp_path_factory.mktemp("cache"), records)
    logging.getLogger().removeHandler(handler)


def assert_close(got, want, what: str, tol: float = TOL) -> None:
    err = relative(got, want)
    print(f"{what}: max relative difference {err:.2e}")
    assert err <= tol, f"{what}: max relative difference {err:.2e} > {tol:.0e}"


def stock_samplers(s: Setup, model):
    """The stock KSampler and SamplerCustomAdvanced (RandomNoise, CFGGuider, KSamplerSelect, BasicScheduler) with
    PixArt Sigma Sampler's settings -> two latents in the model's sampling scale."""
    import comfy_extras.nodes_custom_sampler as custom

    import nodes as comfy_nodes

    positive, negative = s.conds()
    scale = model.model.latent_format.scale_factor
    (ksampler,) = call(
        comfy_nodes.KSampler,
        model=model,
        seed=SEED,
        steps=STEPS,
        cfg=CFG,
        sampler_name="dpmpp_2m",
        scheduler="sgm_uniform",
        positive=positive,
        negative=negative,
        latent_image=s.latent,
        denoise=1.0,
    )
    (noise,) = call(custom.RandomNoise, noise_seed=SEED)
    (guider,) = call(custom.CFGGuider, model=model, positive=positive, negative=negative, cfg=CFG)
    (sampler,) = call(custom.KSamplerSelect, sampler_name="dpmpp_2m")
    (sigmas,) = call(custom.BasicScheduler, model=model, scheduler="sgm_uniform", steps=STEPS, denoise=1.0)
    out, _ = call(
        custom.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=s.latent
    )
    return ksampler["samples"] * scale, out["samples"] * scale


def equals_pixart(s: Setup, method: str, settings: dict, make_cache, shifted: dict) -> None:
    """The node through each sampler equals pixart's cache through ComfyUI's dpmpp_2m, reusing the same steps; a
    pixart run with one setting shifted by a step differs by far more than the tolerance (the comparison sees a
    wrong step mapping, and that the setting matters at all); a second generation resets the state (same latent,
    same log line)."""
    cached = s.cached(s.model(), method, **settings)
    got, lines = s.sample(cached)
    cache = make_cache(settings)
    want = s.reference(cache)
    assert_close(got, want, f"{method} through PixArt Sigma Sampler vs pixart")
    assert cache.stats.reused_steps, f"{method}: the pixart cache reused nothing; the check proves nothing"
    assert len(lines) == 1 and cache.stats.summary() in lines[0], (cache.stats.summary(), lines)
    print(lines[0])
    for name, latent in zip(("KSampler", "SamplerCustomAdvanced"), stock_samplers(s, cached), strict=True):
        assert_close(latent, want, f"{method} through {name} vs pixart")
        assert len(s.cache_lines()) >= 1 and cache.stats.summary() in s.cache_lines()[-1], s.cache_lines()
    again, lines_again = s.sample(cached)
    assert s.torch.equal(again, got) and lines_again == lines, "a second generation did not start afresh"
    off = s.reference(make_cache({**settings, **shifted}))
    err = relative(off, want)
    print(f"{method} with {shifted}: relative difference {err:.2e}")
    assert err > 10 * TOL, f"{method}: shifting {shifted} changed the latent by only {err:.2e}"


def test_tgate(s: Setup) -> None:
    from pixart.caches import TGate, TGateConfig

    def make(settings):
        return TGate(TGateConfig(**settings))

    equals_pixart(s, "T-GATE", TGATE, make, {"gate_step": TGATE["gate_step"] + 1})


def test_first_block_cache(s: Setup) -> None:
    from pixart.caches import DBCache, DBCacheConfig

    def make(settings):
        return DBCache(DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, **settings))

    equals_pixart(s, "first-block cache", FIRST_BLOCK, make, {"max_warmup_steps": 3})


def test_dbcache(s: Setup) -> None:
    from pixart.caches import DBCache, DBCacheConfig

    def make(settings):
        return DBCache(DBCacheConfig(**settings))

    equals_pixart(s, "DBCache", DBCACHE, make, {"max_warmup_steps": 4})


def test_disabled_equals_plain(s: Setup) -> None:
    """off, T-GATE with gate_step = steps and sp_interval 1, first-block cache and DBCache at threshold 0: the plain
    run, bit for bit; a cache node set to off after a T-GATE one removes it."""
    torch = s.torch
    plain, lines = s.sample(s.model())
    assert not lines, lines
    disabled = {
        "off": ("off", {}),
        "T-GATE gate_step = steps": ("T-GATE", {"gate_step": STEPS, "sp_interval": 1}),
        "first-block cache threshold 0": ("first-block cache", {"residual_diff_threshold": 0.0}),
        "DBCache threshold 0": ("DBCache", {**DBCACHE, "residual_diff_threshold": 0.0}),
    }
    for what, (method, settings) in disabled.items():
        got, lines = s.sample(s.cached(s.model(), method, **settings))
        assert torch.equal(got, plain), f"{what} changed the latent"
        assert method == "off" or (len(lines) == 1 and " 0 reused []" in lines[0]), (what, lines)
    removed = s.cached(s.cached(s.model(), "T-GATE", **TGATE), "off")
    got, lines = s.sample(removed)
    assert torch.equal(got, plain) and not lines, "off after T-GATE kept the cache"


def summary_counts(line: str) -> tuple[int, int]:
    """(steps computed, steps reused) of a cache log line."""
    computed = int(line.split(" steps computed, ")[0].rsplit(" ", 1)[1])
    reused = int(line.split(" steps computed, ")[1].split(" ")[0])
    return computed, reused


def test_heun_and_lora(s: Setup) -> None:
    """heun (two model calls per step): each schedule step is one cache step, the further calls run uncached; with
    a LoRA-style weight patch (before or after the node) the cache still runs, reuses steps and the patch counts."""
    for method, settings in (("T-GATE", TGATE), ("first-block cache", FIRST_BLOCK)):
        cached = s.cached(s.model(), method, **settings)
        got, lines = s.sample(cached, sampler="heun")
        assert len(lines) == 1, lines
        computed, reused = summary_counts(lines[0])
        assert computed + reused == STEPS and reused > 0, lines[0]
        assert f"{2 * STEPS - 1} model calls, {STEPS - 1} uncached" in lines[0], lines[0]
        assert bool(s.torch.isfinite(got).all()), f"{method} with heun"
        print(lines[0])
    key = "diffusion_model.blocks.1.attn.qkv.weight"
    for order in ("cache then LoRA", "LoRA then cache"):
        model = s.model()
        delta = 0.05 * s.torch.randn_like(model.model.diffusion_model.blocks[1].attn.qkv.weight)
        if order == "cache then LoRA":
            patched = s.cached(model, "T-GATE", **TGATE).clone()
            assert patched.add_patches({key: (delta,)}, 1.0) == [key]
        else:
            lora = model.clone()
            assert lora.add_patches({key: (delta,)}, 1.0) == [key]
            patched = s.cached(lora, "T-GATE", **TGATE)
        got, lines = s.sample(patched)
        assert len(lines) == 1 and summary_counts(lines[0])[1] > 0, (order, lines)
        unpatched, _ = s.sample(s.cached(s.model(), "T-GATE", **TGATE))
        assert relative(got, unpatched) > 10 * TOL, f"{order}: the weight patch changed nothing"
        print(f"{order}: {lines[0]}")


def test_tgate_needs_both_halves(s: Setup) -> None:
    """CFG 1 (ComfyUI then runs the positive prompt alone): T-GATE refuses with an error that says why and what to
    use; first-block cache runs."""
    import comfy.sample

    positive, negative = s.conds()
    noise = s.torch.zeros_like(s.latent["samples"])
    for method, settings in (("T-GATE", TGATE), ("first-block cache", FIRST_BLOCK)):
        model = s.cached(s.model(), method, **settings)
        try:
            comfy.sample.sample(
                model, noise, 2, 1.0, "euler", "normal", positive, negative, noise, seed=0, disable_pbar=True
            )
        except ValueError as e:
            assert method == "T-GATE" and "positive and the negative prompt in one model call" in str(e), str(e)
            print(f"{method} at CFG 1: {e}")
        else:
            assert method != "T-GATE", "T-GATE ran at CFG 1"
