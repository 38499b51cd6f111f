"""Time a full PixArt-Sigma generation inside ComfyUI: this pack's nodes against ComfyUI's built-in PixArt path.

Cases, all on the same random DiT (official keys, width 1152, 16 heads, 4096 caption channels, ``--depth`` blocks;
scripts/tiny_weights.py), the same latent size, seed, steps, CFG, sampler and scheduler:

- ``ours``: PixArtSigmaDiTLoader + PixArtSigmaT5Loader/PixArtSigmaTextEncode + PixArtSigmaSampler
- ``ours-ksampler``: the same model and conditioning through ComfyUI's KSampler
- ``builtin``: UNETLoader + KSampler, conditioned by CLIPLoader(type pixart) + CLIPTextEncode on the tiny T5-XXL
  stand-in (``--builtin-cond clip``, the path users have) or by our PixArtSigmaTextEncode (``--builtin-cond ours``)

Either conditioning holds the prompt's real tokens only: the built-in model attends to just those (batched to a
common length by repeating), while our model pads both prompts to 300 tokens with a mask (the reference semantics)
and drops the columns every sample masks before the caption projection, so it attends to exactly the real tokens.

What is timed: each case runs once to load and encode (not timed); then every repeat re-queues it with only the seed
changed, so ComfyUI re-executes just the sampler, VAEDecode and PreviewImage (checked against the
``execution_cached`` message). The time is the server's own ``execution_start`` -> ``execution_success`` timestamps
in /history (ms). The VAE is a tiny random TAESD-layout decoder; its share (with ComfyUI's per-prompt overhead) is
measured by a decode-only prompt (EmptyLatentImage -> LatentMultiply -> VAEDecode -> PreviewImage) and subtracted:
``sampling_seconds``. Cases are interleaved within each repeat (``--cache-lru`` keeps every case's loaders cached),
so load from other jobs on the machine hits all alike. The server process's CPU time (/proc, user + system) is
recorded as well: on a shared machine it varies far less than wall time. One JSON line per case: medians, the
fastest and every run, spread (max - min) / median, ``time_ratio_vs_builtin`` (sampling_seconds / builtin's, < 1:
faster) and ``cpu_ratio_vs_builtin`` (the same for CPU seconds).

    python scripts/bench_sampler.py --comfy /work/comfy/v0.33
    python scripts/bench_sampler.py --comfy /work/comfy/v0.3.64 --size 1024 --depth 4 --repeats 5
    COMFYUI_PATH=~/ComfyUI python scripts/bench_sampler.py --builtin-cond ours --cases ours,builtin
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import tiny_weights
from scripts.comfy_checkout import NoInterpreter, choose_interpreter, find_comfy
from scripts.comfy_server import ComfyServer, PromptRejected, ServerFailed, WorkflowFailed
from scripts.comfy_tree import comfy_version

log = logging.getLogger("bench_sampler")
DIT, T5, CLIP_T5, VAE = (
    "pixart_sigma_bench.safetensors",
    "t5xxl_tiny.safetensors",
    "t5xxl_stub.pth",
    "tiny_taesdxl.safetensors",
)
PROMPT = "a red fox sitting in fresh snow at sunrise, soft golden light, highly detailed photograph"
CASES = ("ours", "ours-ksampler", "builtin")
DECODE = "decode"  # the decode-only calibration prompt
TIMED = {"20", "21", "22"}  # sampler (or LatentMultiply), VAEDecode, PreviewImage: all a reseeded run may execute


def node(kind: str, **inputs) -> dict:
    return {"class_type": kind, "inputs": inputs}


def variant_for(size: int) -> str:
    return "sigma-512" if size <= 512 else "sigma-1024" if size <= 1024 else "sigma-2k"


def clip_cond(case: str, args) -> bool:
    return case == "builtin" and args.builtin_cond == "clip"


def case_prompt(case: str, args, seed: int) -> dict:
    """The API prompt of one case; only the seed (or the decode-only multiplier) changes between repeats."""
    prompt = {
        "10": node("EmptyLatentImage", width=args.size, height=args.size, batch_size=1),
        "11": node("VAELoader", vae_name=VAE),
        "21": node("VAEDecode", samples=["20", 0], vae=["11", 0]),
        "22": node("PreviewImage", images=["21", 0]),
    }
    if case == DECODE:
        prompt["20"] = node("LatentMultiply", samples=["10", 0], multiplier=1.0 + (seed % 900) / 100)
        return prompt
    if not clip_cond(case, args):
        prompt["1"] = node("PixArtSigmaT5Loader", t5_name=T5, tokenizer="auto", dtype="fp32", device="default",
                           offload_after_encode=True)  # fmt: skip
        prompt["2"] = node("PixArtSigmaTextEncode", t5=["1", 0], text=PROMPT, model_family="sigma")
        prompt["3"] = node("PixArtSigmaTextEncode", t5=["1", 0], text="", model_family="sigma")
    else:
        prompt["6"] = node("CLIPLoader", clip_name=CLIP_T5, type="pixart")
        prompt["2"] = node("CLIPTextEncode", clip=["6", 0], text=PROMPT)
        prompt["3"] = node("CLIPTextEncode", clip=["6", 0], text="")
    if case.startswith("ours"):
        prompt["4"] = node("PixArtSigmaDiTLoader", ckpt_name=DIT, variant=variant_for(args.size),
                           weight_dtype="default", kv_compress="off", kv_factor=2, kv_layers="auto")  # fmt: skip
    else:
        prompt["4"] = node("UNETLoader", unet_name=DIT, weight_dtype="default")
    sampler = "PixArtSigmaSampler" if case == "ours" else "KSampler"
    prompt["20"] = node(sampler, model=["4", 0], positive=["2", 0], negative=["3", 0], latent_image=["10", 0],
                        seed=seed, steps=args.steps, cfg=args.cfg, sampler_name=args.sampler,
                        scheduler=args.scheduler, denoise=1.0)  # fmt: skip
    return prompt


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_run(server, prompt: dict, what: str, timeout: float) -> tuple[float, float]:
    """Run ``prompt``: (the server's execution_start -> execution_success seconds, the server's CPU seconds)."""
    cpu = cpu_seconds(server.process.pid)
    entry = server.run(prompt, timeout)
    cpu = cpu_seconds(server.process.pid) - cpu
    messages = dict(entry["status"]["messages"])  # kind -> data (each kind once per prompt)
    rerun = set(prompt) - set(messages["execution_cached"]["nodes"])
    if rerun != TIMED:
        raise RuntimeError(f"{what}: ComfyUI re-executed {sorted(rerun)}, expected only {sorted(TIMED)}")
    return (messages["execution_success"]["timestamp"] - messages["execution_start"]["timestamp"]) / 1000, cpu


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy", type=Path, default=None, help="ComfyUI checkout (default: $COMFYUI_PATH)")
    parser.add_argument("--python", help="ComfyUI's interpreter (default: $COMFYUI_PYTHON, else the first that works)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument(
        "--builtin-cond",
        choices=("clip", "ours"),
        default="clip",
        help="conditioning of the builtin case: CLIPLoader+CLIPTextEncode, or PixArtSigmaTextEncode",
    )
    parser.add_argument("--size", type=int, default=512, help="image side in px (builtin needs >= 512)")
    parser.add_argument("--depth", type=int, default=2, help="DiT blocks (28 = the released model)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.5)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--scheduler", default="sgm_uniform")
    parser.add_argument("--seed", type=int, default=42, help="warm-up seed; repeat i uses seed + 1 + i")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--gpu", action="store_true", help="let ComfyUI use its GPU (default: --cpu)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary base directory (models, log)")
    args = parser.parse_args()
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(args.cases) - set(CASES):
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {', '.join(CASES)}")
    if args.size % 16:
        parser.error("--size must be a multiple of 16 (patch 2 of 8-px latents)")
    if "builtin" in args.cases and args.size < 512:
        parser.error("ComfyUI's built-in PixArt crashes below 64 latent px a side: use --size >= 512 or drop builtin")
    args.comfy, why = find_comfy(args.comfy)
    if args.comfy is None:
        parser.error(why)
    try:
        args.interpreter = choose_interpreter(args.comfy, args.python)
    except NoInterpreter as e:
        parser.error(str(e))
    return args


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    version = comfy_version(args.comfy)
    base = Path(tempfile.mkdtemp(prefix="pixart-bench-"))
    models = base / "models"
    tiny_weights.write(
        models / "diffusion_models" / DIT, tiny_weights.dit_state_dict(variant_for(args.size), args.depth)
    )
    cases = [*args.cases, DECODE]
    tiny_weights.write_tiny_models(models, [case_prompt(c, args, 0) for c in cases])
    # The CLIPLoader stand-in leaves most of T5-XXL unloaded: it must read as zeros (see scripts/tiny_weights.py).
    env = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    extra = ["--cache-lru", "64", "--preview-method", "none"]  # all cases stay cached; no step previews
    env |= args.interpreter.env
    server = ComfyServer(args.comfy, base, args.interpreter.python, cpu=not args.gpu, extra_args=extra, env=env)
    times: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, list[float]] = {c: [] for c in cases}
    try:
        with server:
            if server.import_failed():
                raise ServerFailed(f"the pack failed to import:\n{server.tail()}")
            for case in cases:
                log.info("%s: warm-up (loading, encoding, first sampling)", case)
                server.run(case_prompt(case, args, args.seed), args.timeout)
            for i in range(args.repeats):
                for case in cases:
                    seconds, cpu_s = timed_run(server, case_prompt(case, args, args.seed + 1 + i), case, args.timeout)
                    times[case].append(seconds)
                    cpu[case].append(cpu_s)
                    log.info("%s: repeat %d/%d %.2f s (CPU %.1f s)", case, i + 1, args.repeats, seconds, cpu_s)
    except (PromptRejected, WorkflowFailed, ServerFailed, RuntimeError, TimeoutError) as e:
        log.error("%s\n(ComfyUI log: %s)", e, server.log_path)
        return 1
    decode = statistics.median(times[DECODE])
    sampling = {c: statistics.median(times[c]) - decode for c in args.cases}
    cpu_sampling = {c: statistics.median(cpu[c]) - statistics.median(cpu[DECODE]) for c in args.cases}
    for case in args.cases:
        runs, median = times[case], statistics.median(times[case])
        line = {
            "impl": case,
            "sampler_node": "PixArtSigmaSampler" if case == "ours" else "KSampler",
            "model_node": "PixArtSigmaDiTLoader" if case.startswith("ours") else "UNETLoader",
            "conditioning": "CLIPTextEncode" if clip_cond(case, args) else "PixArtSigmaTextEncode",
            "comfy": version,
            "device": "gpu" if args.gpu else "cpu",
            "cpus": os.cpu_count(),
            "size": args.size,
            "depth": args.depth,
            "steps": args.steps,
            "cfg": args.cfg,
            "sampler": f"{args.sampler}/{args.scheduler}",
            "seconds": round(median, 3),
            "decode_seconds": round(decode, 3),
            "sampling_seconds": round(sampling[case], 3),
            "seconds_per_step": round(sampling[case] / args.steps, 4),
            "min_seconds": round(min(runs), 3),
            "runs": [round(t, 3) for t in runs],
            "spread": round((max(runs) - min(runs)) / median, 3),
            "cpu_sampling_seconds": round(cpu_sampling[case], 2),
            "cpu_runs": [round(t, 2) for t in cpu[case]],
            "loadavg_1min": round(os.getloadavg()[0], 2),
        }
        if "builtin" in sampling:
            line["time_ratio_vs_builtin"] = round(sampling[case] / sampling["builtin"], 3)
            line["cpu_ratio_vs_builtin"] = round(cpu_sampling[case] / cpu_sampling["builtin"], 3)
        print(json.dumps(line), flush=True)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
