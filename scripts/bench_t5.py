"""Benchmark the PixArt T5 text encoder: load time, encode time and peak memory per dtype, one JSON line per case.

Without --path a random T5 of the chosen --size is written to a temporary folder (with a small sentencepiece
tokenizer trained on the spot), so the script runs anywhere without downloads. Peak RSS is reset before each case
on Linux (/proc/self/clear_refs), so it covers that case's load and encodes; elsewhere it is the process peak.

    python scripts/bench_t5.py                                    # random T5-small size, float32 + bfloat16, CPU
    python scripts/bench_t5.py --size xxl-depth2 --dtypes bfloat16,fp8_e4m3fn --device cuda
    python scripts/bench_t5.py --path models/text_encoders/t5xxl_fp16.safetensors --tokenizer t5_tokenizer/
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name: (d_model, d_ff, num_layers, num_heads) of T5 v1.1; d_kv = 64 except tiny; 32128 embedding rows
SIZES = {
    "tiny": (64, 128, 2, 4),
    "small": (512, 1024, 8, 6),
    "base": (768, 2048, 12, 12),
    "xl-depth2": (2048, 5120, 2, 32),
    "xxl-depth2": (4096, 10240, 2, 64),
    "xxl": (4096, 10240, 24, 64),
}
# dtype argument -> (compute dtype, Linear weight dtype or None)
DTYPES = {
    "float32": ("float32", None),
    "bfloat16": ("bfloat16", None),
    "float16": ("float16", None),
    "fp8_e4m3fn": ("bfloat16", "float8_e4m3fn"),
    "fp8_e5m2": ("bfloat16", "float8_e5m2"),
}
PROMPT = (
    "a cinematic photo of a small red fox sitting in the snow at golden hour, shallow depth of field, "
    "detailed fur, soft light, 35mm lens"
)


def write_random_t5(folder: Path, size: str) -> tuple[Path, Path]:
    """Random T5 of ``size`` as one bf16 safetensors file, plus a trained sentencepiece tokenizer folder."""
    import sentencepiece as spm
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    d_model, d_ff, layers, heads = SIZES[size]
    d_kv = 16 if size == "tiny" else 64
    config = T5Config(
        vocab_size=32128, d_model=d_model, d_ff=d_ff, num_layers=layers, num_heads=heads, d_kv=d_kv,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
    )  # fmt: skip
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in T5EncoderModel(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {
        key: random_weight(key, shape, generator)
        for key, shape in shapes.items()
        if key != "encoder.embed_tokens.weight"
    }
    path = folder / f"t5_{size}.safetensors"
    save_file(state, str(path))
    rng = random.Random(0)
    words = PROMPT.replace(",", "").split()
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(500)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=60, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "spiece.model").write_bytes(model.getvalue())
    return path, folder / "tokenizer"


def random_weight(key: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """A bf16 random weight: norms 1, embedding N(0, 1), projections N(0, 1/fan_in), so activations stay O(1)."""
    if "norm" in key:
        return torch.ones(shape, dtype=torch.bfloat16)
    std = 1.0 if key == "shared.weight" else shape[-1] ** -0.5
    return torch.randn(shape, generator=generator).mul_(std).to(torch.bfloat16)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux VmHWM); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def proc_status_mb(field: str) -> float | None:
    """A memory field of Linux /proc/self/status ("VmRSS" now, "VmHWM" peak) in MiB; None elsewhere."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mb() -> float | None:
    """Peak resident set size in MiB: Linux VmHWM, else ``resource`` (macOS reports bytes), else None (Windows)."""
    peak = proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rounded(value: float | None, digits: int = 1) -> float | None:
    """``round`` that passes None through."""
    return None if value is None else round(value, digits)


def run_case(args: argparse.Namespace, path: str, tokenizer: str | None, dtype_name: str) -> dict:
    """Load once, warm up, time ``args.repeats`` encodes; returns the JSON record."""
    import transformers

    from pixart.text_encoder import load_t5

    if args.threads:
        torch.set_num_threads(args.threads)
    compute, weight = DTYPES[dtype_name]
    device = torch.device(args.device)
    gc.collect()  # the previous case's encoder may sit in reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = proc_status_mb("VmRSS")
    rss_scope = "case" if reset_peak_rss() else "process"
    start = time.perf_counter()
    encoder = load_t5(
        path,
        tokenizer=tokenizer,
        dtype=getattr(torch, compute),
        device=device,
        weight_dtype=getattr(torch, weight) if weight else None,
    )
    load_s = time.perf_counter() - start
    prompts = [PROMPT] * args.batch
    times = []
    for i in range(args.warmup + args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        hidden, _ = encoder.encode(prompts, max_length=args.max_length)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    cfg, peak = encoder.model.config, peak_rss_mb()
    record = {
        "path": str(path),
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "compute_dtype": compute,
        "weight_dtype": str(encoder.weight_dtype).removeprefix("torch."),
        "d_model": cfg.d_model,
        "layers": cfg.num_layers,
        "params_m": round(sum(t.numel() for t in encoder.model.state_dict().values()) / 1e6, 1),
        "batch": args.batch,
        "max_length": args.max_length,
        "load_s": round(load_s, 3),
        "encode_s": round(statistics.median(times), 4),
        "encode_runs_s": [round(t, 4) for t in times],
        "tokens_per_s": round(args.batch * args.max_length / statistics.median(times), 1),
        "rss_before_mb": rounded(rss_before),
        "peak_rss_mb": rounded(peak),
        "peak_rss_scope": rss_scope,
        "finite": bool(torch.isfinite(hidden).all()),
    }
    if device.type == "cuda":
        record["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return record


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", help="T5 .safetensors file or folder; default: a random T5 of --size")
    parser.add_argument("--tokenizer", help="tokenizer folder or file (default: found beside --path)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="random T5 size when --path is absent")
    parser.add_argument("--dtypes", default="float32,bfloat16", help=f"comma list of {', '.join(DTYPES)}")
    parser.add_argument("--device", default="cpu", help="compute device, e.g. cpu or cuda")
    parser.add_argument("--batch", type=int, default=2, help="prompts per encode (CFG: prompt + negative)")
    parser.add_argument("--max-length", type=int, default=300, help="tokens per prompt (Sigma 300, alpha 120)")
    parser.add_argument("--repeats", type=int, default=3, help="timed encodes; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed encodes first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    unknown = set(args.dtypes.split(",")) - set(DTYPES)
    if unknown:
        parser.error(f"--dtypes: unknown {sorted(unknown)}; choose from {list(DTYPES)}")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_t5_") as tmp:
        if args.path:
            path, tokenizer = args.path, args.tokenizer
        else:
            path, tokenizer = map(str, write_random_t5(Path(tmp), args.size))
        for dtype_name in args.dtypes.split(","):
            record = run_case(args, path, tokenizer, dtype_name)
            print(json.dumps({"size": None if args.path else args.size, **record}), flush=True)


if __name__ == "__main__":
    main()
