"""Benchmark one PixArt DiT forward (CFG batch 2): ours vs diffusers' PixArtTransformer2DModel vs ComfyUI's built-in
PixArtMS (when a ComfyUI checkout is found), all with the same random weights.

Prints one JSON line per case: median times, speed ratios, peak memory, the model's FLOPs and the fraction of this
machine's matmul rate our forward reaches. Each model runs in its own subprocess so peak memory is its own; with
``--rounds R`` every model is measured R times in alternating order and the ratios are the medians of the rounds'
ratios, so a machine whose speed drifts over minutes (shared CPUs) skews no model more than another. The matmul rate
is measured in a process of its own right before each of ours.

    python scripts/bench_dit.py --sizes 1024 --depth 4
    python scripts/bench_dit.py --sizes 2048,4096 --depth 2 --kv off,avgpool2-half,avgpool2-all --impls ours
    python scripts/bench_dit.py --device cuda --dtypes bf16 --depth 28 --sizes 1024,2048,4096
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixart import VARIANTS, KVCompress, PixArtTransformer  # noqa: E402
from pixart.checkpoints.keymap import diffusers_config, official_to_diffusers  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT_TOKENS, NEGATIVE_TOKENS = 40, 1  # a typical prompt and the empty negative, out of 300 padded tokens
MODEL_MAX_LENGTH = 300


def parse_kv(name: str, depth: int) -> KVCompress | None:
    """``off`` | ``<mode><factor>-half`` (the second half of the blocks: 14–27 of 28) | ``<mode><factor>-all``."""
    if name == "off":
        return None
    spec, _, scope = name.partition("-")
    mode, factor = spec.rstrip("0123456789"), int(spec[len(spec.rstrip("0123456789")) :])
    layers = None if scope == "half" else tuple(range(depth))
    return KVCompress(mode, factor, layers)


def forward_gflop(config, grid: tuple[int, int], kv: KVCompress | None, batch: int, text_tokens: int) -> float:
    """GFLOP (multiply-adds × 2) of one forward's matmuls: the blocks' projections, MLPs and attention over the keys
    actually attended, the caption projection and the final layer (the timestep MLPs and the patch embedding, under
    1%, are left out)."""
    c, n = config.hidden_size, grid[0] * grid[1]
    compressed = kv.layer_set(config.depth) if kv else frozenset()
    total = 0.0
    for i in range(config.depth):
        m = n if i not in compressed else -(-grid[0] // kv.factor) * -(-grid[1] // kv.factor)
        # per image token: qkv 3C², self-attention out C², cross-attention query C² and out C², MLP 2·ratio·C²;
        # per caption token: cross-attention keys and values 2C²
        linear = n * (3 + 1 + 1 + 1 + 2 * config.mlp_ratio) * c * c + text_tokens * 2 * c * c
        attention = 2 * n * m * c + 2 * n * text_tokens * c
        total += 2 * (linear + attention)
    total += 2 * text_tokens * (config.caption_channels * c + c * c) + 2 * n * c * config.patch_size**2 * 8
    return batch * total / 1e9


def matmul_gflops(device: str, dtype: torch.dtype) -> float:
    """This machine's peak rate on a model-shaped matmul (4096 tokens × 1152 -> 4608): the best of 10 runs, into a
    preallocated output (a fresh 75 MB output per call would time the kernel's page faults too)."""
    a = torch.randn(4096, 1152, device=device, dtype=dtype)
    b = torch.randn(1152, 4608, device=device, dtype=dtype)
    out = torch.empty(4096, 4608, device=device, dtype=dtype)
    times = _time(lambda: torch.mm(a, b, out=out), device, runs=10, warmup=3)
    return 2 * 4096 * 1152 * 4608 / min(times) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _inputs(config, size: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    latent = size // 8
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)
    t = torch.tensor([500.0, 500.0], device=device)
    y = torch.randn(2, MODEL_MAX_LENGTH, config.caption_channels, generator=g).to(device, dtype)
    mask = torch.zeros(2, MODEL_MAX_LENGTH, device=device)
    mask[0, :PROMPT_TOKENS] = 1
    mask[1, :NEGATIVE_TOKENS] = 1
    return x, t, y, mask


def _build(impl: str, config, kv, device: str, dtype: torch.dtype, comfyui: str | None):
    """The model under test and a callable running one forward."""
    torch.manual_seed(0)
    with torch.device("meta"):
        ours = PixArtTransformer(config, kv_compress=kv)
    weights = {k: torch.randn(v.shape, dtype=dtype) * 0.02 for k, v in ours.state_dict().items()}
    if impl == "ours":
        model = PixArtTransformer(config, kv_compress=kv, dtype=dtype, device=device)
        model.load_state_dict(weights)
        model.eval()
        return lambda x, t, y, m: model(x, t, y, m)
    if impl == "diffusers":
        from diffusers import PixArtTransformer2DModel
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()

        model = PixArtTransformer2DModel(**diffusers_config(config)).to(device, dtype)
        model.load_state_dict(official_to_diffusers(weights))
        model.eval()
        cond = {"resolution": None, "aspect_ratio": None}
        return lambda x, t, y, m: (
            model(x, encoder_hidden_states=y, timestep=t, encoder_attention_mask=m, added_cond_kwargs=cond).sample
        )
    if impl == "comfy":
        sys.path.insert(0, comfyui)
        from comfy.cli_args import args as comfy_args

        comfy_args.cpu = device == "cpu"  # before comfy.model_management looks for a GPU
        import comfy.ops
        from comfy.ldm.pixart.pixartms import PixArtMS

        model = PixArtMS(
            input_size=config.sample_size,
            hidden_size=config.hidden_size,
            depth=config.depth,
            num_heads=config.num_heads,
            pe_interpolation=config.pe_interpolation,
            model_max_length=config.caption_tokens,
            micro_condition=False,
            dtype=dtype,
            device=device,
            operations=comfy.ops.disable_weight_init,
        )
        model.load_state_dict(weights, strict=False)
        model.eval()
        # ComfyUI feeds unpadded prompt tokens and an all-pad negative, batched to one length.
        return lambda x, t, y, m: model(x, t, y[:, :PROMPT_TOKENS])
    raise ValueError(f"unknown implementation {impl!r}")


def _measure(queue, impl, config, kv, size, device, dtype, runs, warmup, comfyui, threads):
    torch.set_num_threads(threads)
    if impl == "matmul":
        queue.put({"matmul_gflops": matmul_gflops(device, dtype)})
        return
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run = _build(impl, config, kv, device, dtype, comfyui)
    x, t, y, mask = _inputs(config, size, device, dtype)
    with torch.inference_mode():
        times = _time(lambda: run(x, t, y, mask), device, runs, warmup)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"seconds": statistics.median(times), "peak_mb": round(peak, 1)})


def measure(impl, *args) -> dict:
    """Run one implementation on one case in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(queue, impl, *args))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"error": f"{impl} exited with {proc.exitcode}"}
    return queue.get()


def measure_rounds(impls: list[str], rounds: int, *args) -> list[dict]:
    """Each implementation once per round, in alternating order, with the matmul rate measured in its own process
    right before ours: one {impl: result} dict per round."""
    per_round = []
    for r in range(rounds):
        order = impls if r % 2 == 0 else impls[::-1]
        results = {}
        for impl in order:
            if impl == "ours":
                results["matmul"] = measure("matmul", *args)
            results[impl] = measure(impl, *args)
        per_round.append(results)
    return per_round


def summarise(per_round: list[dict], gflop: float, off_seconds: float | None) -> dict:
    """Median seconds, largest peak, and the medians of the per-round ratios."""
    impls = [impl for impl in per_round[0] if impl != "matmul"]
    failed = {impl: r[impl]["error"] for r in per_round for impl in impls if "error" in r[impl]}
    measured = [impl for impl in impls if impl not in failed]
    results = {impl: {"error": failed[impl]} for impl in failed}
    for impl in measured:
        results[impl] = {
            "seconds": statistics.median(r[impl]["seconds"] for r in per_round),
            "peak_mb": max(r[impl]["peak_mb"] for r in per_round),
        }
    line: dict = {"results": results}
    if "ours" in failed:
        return line
    rates = [r["matmul"]["matmul_gflops"] for r in per_round]
    line["matmul_gflops"] = round(statistics.median(rates), 1)
    fractions = [gflop / r["ours"]["seconds"] / r["matmul"]["matmul_gflops"] for r in per_round]
    line["ours_matmul_fraction"] = round(statistics.median(fractions), 3)
    for other in (impl for impl in measured if impl != "ours"):
        ratio = statistics.median(r[other]["seconds"] / r["ours"]["seconds"] for r in per_round)
        line[f"speedup_vs_{other}"] = round(ratio, 3)
    if off_seconds:
        line["speedup_vs_kv_off"] = round(off_seconds / results["ours"]["seconds"], 3)
    return line


def find_comfyui(explicit: str | None) -> str | None:
    path = explicit or os.environ.get("COMFYUI_PATH")
    if path and (Path(path) / "comfy" / "ldm" / "pixart").is_dir():
        return path
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024", help="image sides in pixels, comma-separated (latent = side/8)")
    parser.add_argument("--depth", type=int, default=4, help="blocks (28 = the released model)")
    parser.add_argument("--dtypes", default="fp32", help="fp32,bf16,fp16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kv", default="off", help="off, avgpool2-half, uniform2-half, avgpool2-all, ...")
    parser.add_argument("--impls", default="ours,diffusers,comfy", help="ours,diffusers,comfy")
    parser.add_argument("--variant", default="sigma-1024", choices=sorted(VARIANTS))
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per process (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per model, in alternating order")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = VARIANTS[args.variant].replace(depth=args.depth)
    comfyui = find_comfyui(args.comfyui)
    impls = [i for i in args.impls.split(",") if i != "comfy" or comfyui]
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        for size in (int(s) for s in args.sizes.split(",")):
            off_seconds = None
            for kv_name in args.kv.split(","):
                kv = parse_kv(kv_name, config.depth)
                common = (config, kv, size, args.device, dtype, args.runs, args.warmup, comfyui, args.threads)
                per_round = measure_rounds(impls if kv is None else ["ours"], args.rounds, *common)
                grid = (size // 16, size // 16)
                gflop = forward_gflop(config, grid, kv, 2, PROMPT_TOKENS)
                line = {
                    "device": args.device,
                    "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(),
                    "threads": args.threads,
                    "dtype": dtype_name,
                    "image": size,
                    "latent": size // 8,
                    "depth": config.depth,
                    "width": config.hidden_size,
                    "kv": kv_name,
                    "rounds": args.rounds,
                    "gflop": round(gflop, 1),
                    **summarise(per_round, gflop, off_seconds if kv is not None else None),
                }
                if kv is None and "seconds" in line["results"]["ours"]:
                    off_seconds = line["results"]["ours"]["seconds"]
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
