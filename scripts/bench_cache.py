"""Benchmark the step caches on whole generations: 20-step DPM-Solver++ (diffusers' PixArt-Sigma schedule), CFG 4.5,
1024 x 1024, random weights; no cache vs T-GATE and DBCache settings (the published ones included).

Prints one JSON line per case: model calls, batch rows and blocks computed, attentions reused, steps reused, wall
time and the speed-up over no cache. With random weights DBCache's residual diffs say nothing about real images (how
many steps a threshold reuses depends on the trained model), so the "always" rows (threshold 1 with a streak limit)
show what reuse costs and saves; T-GATE's schedule is fixed, so its rows hold for real weights too. Image quality
cannot be measured without the released weights.

    python scripts/bench_cache.py                      # CPU, depth 2
    python scripts/bench_cache.py --device cuda --depth 28 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixart import VARIANTS, PixArtTransformer  # noqa: E402
from pixart.caches import DBCache, DBCacheConfig, GuidedDenoiser, TGate, TGateConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT_TOKENS, NEGATIVE_TOKENS, MODEL_MAX_LENGTH = 40, 1, 300


def cases(depth: int) -> dict:
    """name -> cache factory (None: no cache). T-GATE: its README's PixArt-Sigma setting (gate 15, sp 3, fi 1,
    warm-up 2, published for 25 steps) and its defaults; DBCache: cache-dit's defaults (F8B0, W8, R0.08; Fn capped
    below the depth), first-block cache at R0.08 and R0.12, and reuse forced on to bound the speed-up."""
    fn = min(8, depth - 1)
    return {
        "none": None,
        "tgate-readme-g15-sp3-fi1-w2": lambda: TGate(
            TGateConfig(gate_step=15, sp_interval=3, fi_interval=1, warm_up=2)
        ),
        "tgate-defaults-g10-sp5-fi1-w2": lambda: TGate(TGateConfig()),
        "tgate-g8-sp3-fi1-w2": lambda: TGate(TGateConfig(gate_step=8, sp_interval=3)),
        f"dbcache-defaults-F{fn}B0-W8-R0.08": lambda: DBCache(DBCacheConfig(Fn_compute_blocks=fn)),
        "fbcache-F1B0-W8-R0.08": lambda: DBCache(DBCacheConfig(Fn_compute_blocks=1)),
        "fbcache-F1B0-W4-R0.12": lambda: DBCache(DBCacheConfig(1, 0, 0.12, max_warmup_steps=4)),
        "fbcache-F1B0-W4-always-MC2": lambda: DBCache(
            DBCacheConfig(1, 0, 1.0, max_warmup_steps=4, max_continuous_cached_steps=2)
        ),
        "fbcache-F1B0-W4-always-MC3": lambda: DBCache(
            DBCacheConfig(1, 0, 1.0, max_warmup_steps=4, max_continuous_cached_steps=3)
        ),
    }


def _inputs(config, side: int, device, dtype):
    g = torch.Generator().manual_seed(0)
    latent = side // 8
    noise = torch.randn(1, 4, latent, latent, generator=g).to(device, dtype)
    caption, negative = (torch.randn(1, MODEL_MAX_LENGTH, config.caption_channels, generator=g) for _ in range(2))
    mask, negative_mask = torch.zeros(1, MODEL_MAX_LENGTH), torch.zeros(1, MODEL_MAX_LENGTH)
    mask[0, :PROMPT_TOKENS], negative_mask[0, :NEGATIVE_TOKENS] = 1, 1
    to = {"device": device}
    return noise, caption.to(device, dtype), mask.to(**to), negative.to(device, dtype), negative_mask.to(**to)


class _Counter:
    """Counts model calls and batch rows."""

    def __init__(self, model):
        self.calls = self.rows = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1
        self.rows += args[0].shape[0]


def generate(model, inputs, steps: int, guidance: float, cache) -> torch.Tensor:
    from diffusers import DPMSolverMultistepScheduler

    noise, caption, mask, negative, negative_mask = inputs
    scheduler = DPMSolverMultistepScheduler(
        beta_schedule="linear", beta_start=0.0001, beta_end=0.02, algorithm_type="dpmsolver++", solver_order=2
    )
    scheduler.set_timesteps(steps)
    denoise = GuidedDenoiser(model, caption, mask, negative, negative_mask, guidance, cache)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            x = scheduler.step(denoise(i, scheduler.scale_model_input(x, t), t.to(x.device)), t, x).prev_sample
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = side/8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--depth", type=int, default=None, help="blocks (default 2 on CPU, 28 elsewhere)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    depth = args.depth or (2 if args.device == "cpu" else 28)
    config = VARIANTS["sigma-1024"].__class__(**{**VARIANTS["sigma-1024"].__dict__, "depth": depth})
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model = PixArtTransformer(config, dtype=dtype, device=args.device).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    counter = _Counter(model)
    inputs = _inputs(config, args.size, args.device, dtype)
    table = cases(depth)
    names = args.cases.split(",") if args.cases else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown --cases {unknown}; known: {list(table)}")
    generate(model, inputs, 2, args.guidance, None)  # warm-up
    baseline = None
    for name in ["none"] + [n for n in names if n != "none"]:
        cache = table[name]() if table[name] else None
        counter.calls = counter.rows = 0
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        latents = generate(model, inputs, args.steps, args.guidance, cache)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if baseline is None:
            baseline = (seconds, latents)
        stats = cache.stats if cache else None
        line = {
            "case": name,
            "size": args.size,
            "steps": args.steps,
            "guidance": args.guidance,
            "depth": depth,
            "device": args.device,
            "dtype": args.dtype,
            "model_calls": counter.calls,
            "batch_rows": counter.rows,
            "blocks_computed": stats.blocks_computed if stats else depth * counter.calls,
            "blocks_total": depth * args.steps,
            "steps_reused": stats.reused_steps if stats else [],
            "self_attention_reused": stats.self_attention_reused if stats else 0,
            "cross_attention_reused": stats.cross_attention_reused if stats else 0,
            "seconds": round(seconds, 3),
            "speedup_vs_none": round(baseline[0] / seconds, 3),
            "latent_rel_change_vs_none": round(
                ((latents - baseline[1]).abs().max() / baseline[1].abs().max()).item(), 4
            ),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
