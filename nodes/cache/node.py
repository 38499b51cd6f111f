"""PixArt Sigma Cache: a training-free step cache (T-GATE, first-block cache, DBCache) on a PixArt MODEL, for any
ComfyUI sampler. The settings keep the names and meaning of the reference packages (``tgate``, ``cache-dit``); the
per-run state that drives the cache during sampling is run.py."""

from __future__ import annotations

from ...pixart.caches import DBCacheConfig, TGateConfig
from ..node_api import CATEGORY, check_number, io, number_problem, schema
from .run import CacheSettings, with_cache

WHO = "PixArt Sigma Cache"
OFF, TGATE, FIRST_BLOCK, DBCACHE = "off", "T-GATE", "first-block cache", "DBCache"
METHODS = [TGATE, FIRST_BLOCK, DBCACHE, OFF]
TGATE_DEFAULTS, DBCACHE_DEFAULTS = TGateConfig(), DBCacheConfig()
STEPS_MAX = 10000
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.01}


def _step_input(name: str, default: int, low: int, tooltip: str) -> io.Int.Input:
    return io.Int.Input(name, default=default, min=low, max=STEPS_MAX, tooltip=tooltip)


class PixArtSigmaCache(io.ComfyNode):
    """Adds a step cache to a PixArt MODEL: fewer or cheaper model calls per generation, approximate images."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        t, d = TGATE_DEFAULTS, DBCACHE_DEFAULTS
        return schema(
            node_id="PixArtSigmaCache",
            display_name="PixArt Sigma Cache",
            category=CATEGORY,
            search_aliases=["tgate", "t-gate", "first block cache", "fbcache", "dbcache", "cache-dit", "step cache"],
            description=(
                "PixArt Sigma Cache: reuses work between sampling steps to generate faster, with images close to "
                "(not equal to) the uncached ones. T-GATE (validated on PixArt-Sigma: 1.66x faster, 10K-FID 34.28 -> "
                "32.93 at gate_step 15, sp_interval 3, fi_interval 1, warm_up 2, 25 steps) caches attention outputs; "
                "first-block cache and DBCache (cache-dit) skip the middle blocks when the first blocks barely "
                "changed. Steps count from the first step inside start_percent..end_percent. Works with PixArt "
                "Sigma Sampler, KSampler, SamplerCustomAdvanced and LoRAs; logs steps computed vs reused per "
                "generation."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="PixArt model from PixArt Sigma DiT Loader (LoRAs may come before or after)."
                ),
                io.Combo.Input(
                    "method",
                    options=METHODS,
                    default=TGATE,
                    tooltip=(
                        "T-GATE: cross-attention computed until gate_step, then reused, and CFG dropped (the negative "
                        "prompt alone); self-attention reused on a grid. first-block cache: block 0 always runs, the "
                        "others are skipped when block 0's output changed less than residual_diff_threshold. DBCache: "
                        "the same with Fn_compute_blocks first and Bn_compute_blocks last blocks always run. off: no "
                        "cache (removes an earlier cache node's)."
                    ),
                ),
                _step_input(
                    "gate_step",
                    t.gate_step,
                    1,
                    "T-GATE: steps with cross-attention and CFG; later steps reuse the mean cross-attention of the "
                    "gate step and run only the negative prompt (about half the model work). Lower is faster, further "
                    "from the uncached image; >= the step count turns the gate off. Published on PixArt-Sigma: 15 of "
                    "25 steps (1.66x with sp 3, fi 1, warm-up 2). tgate's default 10.",
                ),
                _step_input(
                    "sp_interval",
                    t.sp_interval,
                    1,
                    "T-GATE: before the gate, self-attention is recomputed every sp_interval steps and reused in "
                    "between (semantics planning). Higher is faster, coarser; 1 always recomputes. Published: 3; "
                    "tgate's default 5.",
                ),
                _step_input(
                    "fi_interval",
                    t.fi_interval,
                    1,
                    "T-GATE: after the gate, self-attention is recomputed every fi_interval steps (fidelity "
                    "improving). Higher is faster, loses detail. Published and tgate's default: 1.",
                ),
                _step_input(
                    "warm_up",
                    t.warm_up,
                    0,
                    "T-GATE: the first warm_up steps always compute self-attention. Published and tgate's default: 2.",
                ),
                io.Float.Input(
                    "residual_diff_threshold",
                    default=d.residual_diff_threshold,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip=(
                        "first-block cache / DBCache: a step reuses the cached middle blocks when the first blocks' "
                        "residual moved less than this (relative L1) since the last computed step. Higher reuses more "
                        "steps (faster, further from the uncached image); 0 never reuses, 1 always (after warm-up). "
                        "cache-dit's default 0.08."
                    ),
                ),
                _step_input(
                    "Fn_compute_blocks",
                    d.Fn_compute_blocks,
                    1,
                    "DBCache: first blocks always computed; their residual decides. More is more accurate and slower. "
                    "cache-dit's default 8 (first-block cache: 1).",
                ),
                io.Int.Input(
                    "Bn_compute_blocks",
                    default=d.Bn_compute_blocks,
                    min=0,
                    max=STEPS_MAX,
                    tooltip="DBCache: last blocks always computed after the cached ones, correcting them. More is "
                    "more accurate and slower. cache-dit's default 0 (first-block cache: 0).",
                ),
                _step_input(
                    "max_warmup_steps",
                    d.max_warmup_steps,
                    0,
                    "first-block cache / DBCache: steps 0 .. max_warmup_steps - 1 (every warmup_interval-th) are "
                    "always computed. Fewer is faster, riskier early on. cache-dit's default 8.",
                ),
                _step_input(
                    "warmup_interval",
                    d.warmup_interval,
                    1,
                    "first-block cache / DBCache: spacing of the always-computed warm-up steps; 1 computes them all. "
                    "cache-dit's default 1.",
                ),
                io.Int.Input(
                    "max_cached_steps",
                    default=d.max_cached_steps,
                    min=-1,
                    max=STEPS_MAX,
                    tooltip="first-block cache / DBCache: at most this many reused steps per generation; -1 no "
                    "limit (cache-dit's default). Caps the speed-up and the drift.",
                ),
                io.Int.Input(
                    "max_continuous_cached_steps",
                    default=d.max_continuous_cached_steps,
                    min=-1,
                    max=STEPS_MAX,
                    tooltip="first-block cache / DBCache: at most this many reused steps in a row; -1 no limit "
                    "(cache-dit's default). 2 or 3 keeps long runs of stale blocks away.",
                ),
                io.Float.Input(
                    "start_percent",
                    default=0.0,
                    **PERCENT,
                    tooltip="Part of the sampling schedule where the cache acts, from start_percent (0: the first "
                    "step) ...; steps before run uncached. Step counts above start here.",
                ),
                io.Float.Input(
                    "end_percent",
                    default=1.0,
                    **PERCENT,
                    tooltip="... to end_percent (1: the last step); steps after run uncached, with CFG.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with the cache; sample it with any sampler node.")],
        )

    @classmethod
    def validate_inputs(cls, residual_diff_threshold=None, start_percent=None, end_percent=None) -> bool | str:
        """Non-finite or out-of-range thresholds and percents, and an empty start..end window, before the prompt
        runs."""
        problems = [number_problem("residual_diff_threshold", residual_diff_threshold, 0.0, 1.0)]
        problems += [
            number_problem(n, v, 0.0, 1.0) for n, v in (("start_percent", start_percent), ("end_percent", end_percent))
        ]
        problems = [p for p in problems if p is not None]
        if not problems and start_percent is not None and end_percent is not None and start_percent >= end_percent:
            problems.append(f"start_percent {start_percent} must be below end_percent {end_percent}")
        return f"{WHO}: {'; '.join(problems)}" if problems else True

    @classmethod
    def execute(
        cls,
        model,
        method,
        gate_step,
        sp_interval,
        fi_interval,
        warm_up,
        residual_diff_threshold,
        Fn_compute_blocks,  # noqa: N803  cache-dit's name
        Bn_compute_blocks,  # noqa: N803
        max_warmup_steps,
        warmup_interval,
        max_cached_steps,
        max_continuous_cached_steps,
        start_percent,
        end_percent,
    ) -> io.NodeOutput:
        for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
            check_number(WHO, name, value, 0.0, 1.0)
        check_number(WHO, "residual_diff_threshold", residual_diff_threshold, 0.0, 1.0)
        if method not in METHODS:
            raise ValueError(f"{WHO}: method {method!r} is not one of {METHODS}")
        if method == OFF:
            return io.NodeOutput(with_cache(model, None))
        if start_percent >= end_percent:
            raise ValueError(f"{WHO}: start_percent {start_percent} must be below end_percent {end_percent}")
        try:
            if method == TGATE:
                config = TGateConfig(gate_step, sp_interval, fi_interval, warm_up)
            else:
                fn, bn = (1, 0) if method == FIRST_BLOCK else (Fn_compute_blocks, Bn_compute_blocks)
                config = DBCacheConfig(
                    fn,
                    bn,
                    residual_diff_threshold,
                    max_warmup_steps,
                    warmup_interval,
                    max_cached_steps,
                    max_continuous_cached_steps,
                )
        except ValueError as e:
            raise ValueError(f"{WHO}: {e}") from e
        return io.NodeOutput(with_cache(model, CacheSettings(method, config, start_percent, end_percent)))
