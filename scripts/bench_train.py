"""Benchmark one training step (forward, backward, clipping, AdamW): ours (``pixart.training.Trainer``) vs diffusers'
``PixArtTransformer2DModel`` (PEFT for LoRA, ``torch.optim.AdamW``) on the same random weights and batch.

Both use the same objective (epsilon MSE + the VB term, computed by ``pixart.training.objective`` on each model's
output), precision and gradient checkpointing. Each implementation runs in its own subprocess so peak memory is its
own (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS); with ``--rounds R`` they alternate order and the
ratios are medians over rounds. Prints one JSON line: steps/s and peak MB of each, and ours / diffusers ratios.

    python scripts/bench_train.py --depth 2 --size 256 --steps 3                      # CPU smoke run
    python scripts/bench_train.py --device cuda --mode full --checkpointing --rounds 3  # Sigma-512, batch 4, bf16
    python scripts/bench_train.py --device cuda --mode lora --rounds 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixart import VARIANTS, PixArtTransformer  # noqa: E402
from pixart.checkpoints.keymap import diffusers_config, official_to_diffusers  # noqa: E402
from pixart.sampling import NoiseSchedule  # noqa: E402
from pixart.training import Trainer, preset  # noqa: E402
from pixart.training.lora import ATTENTION_MODULES  # noqa: E402
from pixart.training.objective import add_noise, schedule_tables, vb_bits  # noqa: E402

CAPTION_TOKENS, PROMPT_TOKENS = 300, 120


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _batch(config, size: int, batch: int, device: str):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, config.in_channels, size // 8, size // 8, generator=g)
    caption = torch.randn(batch, CAPTION_TOKENS, config.caption_channels, generator=g)
    mask = torch.zeros(batch, CAPTION_TOKENS)
    mask[:, :PROMPT_TOKENS] = 1
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.randint(0, 1000, (batch,), generator=g)
    return [v.to(device) for v in (latents, caption, mask, noise, timesteps)]


def _ours(config, weights, settings, device):
    model = PixArtTransformer(config, device=device, token_chunk=None)
    model.load_state_dict(weights)
    trainer = Trainer(model, settings)
    return lambda latents, caption, mask, noise, t: trainer.step(latents, caption, mask, noise, t)


def _diffusers(config, weights, settings, device):
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel(**diffusers_config(config)).to(device)
    model.load_state_dict(official_to_diffusers(weights))
    if settings.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if settings.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, target_modules=list(ATTENTION_MODULES))
        model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = NoiseSchedule()
    tables = schedule_tables(schedule, device)
    autocast = settings.precision == "bf16"
    cond = {"resolution": None, "aspect_ratio": None}

    def step(latents, caption, mask, noise, t):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            x_t = add_noise(latents, noise, t, tables)
            out = model(x_t, encoder_hidden_states=caption, timestep=t, encoder_attention_mask=mask,
                        added_cond_kwargs=cond).sample  # fmt: skip
            eps, var = out.float().chunk(2, dim=1)
            loss = torch.nn.functional.mse_loss(eps, noise)
            loss = loss + vb_bits(latents, x_t, eps, var, t, tables, schedule.prediction).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()

    return step


def _measure(queue, impl, config, settings, size, batch, device, steps, warmup):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = PixArtTransformer(config).state_dict()
    weights = {k: torch.randn(v.shape) * 0.02 for k, v in shapes.items()}
    step = (_ours if impl == "ours" else _diffusers)(config, weights, settings, device)
    inputs = _batch(config, size, batch, device)
    for _ in range(warmup):
        step(*inputs)
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(*inputs)
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"steps_per_s": 1.0 / statistics.median(times), "peak_mb": round(peak, 1)})


def measure(impl: str, *args) -> dict:
    """One implementation in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(queue, impl, *args))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"bench_train: {impl} exited with {proc.exitcode}")
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="sigma-512", choices=sorted(VARIANTS))
    parser.add_argument("--depth", type=int, default=None, help="blocks (default: the variant's 28)")
    parser.add_argument("--mode", default="full", choices=["full", "lora"])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latent side = size / 8)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing per block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    config = VARIANTS[args.variant]
    if args.depth is not None:
        config = config.replace(depth=args.depth)
    name = "pixart_sigma_512_lora" if args.mode == "lora" else "pixart_sigma_512_pokemon"
    settings = preset(name, precision=args.precision, gradient_checkpointing=args.checkpointing)
    common = (config, settings, args.size, args.batch, args.device, args.steps, args.warmup)
    rounds = []
    for r in range(args.rounds):
        order = ("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")
        rounds.append({impl: measure(impl, *common) for impl in order})
    line = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
        "variant": args.variant,
        "depth": config.depth,
        "mode": args.mode,
        "size": args.size,
        "batch": args.batch,
        "precision": args.precision,
        "checkpointing": args.checkpointing,
    }
    for impl in ("ours", "diffusers"):
        line[f"{impl}_steps_per_s"] = round(statistics.median(r[impl]["steps_per_s"] for r in rounds), 4)
        line[f"{impl}_peak_mb"] = statistics.median(r[impl]["peak_mb"] for r in rounds)
    line["speed_ratio"] = round(
        statistics.median(r["ours"]["steps_per_s"] / r["diffusers"]["steps_per_s"] for r in rounds), 3
    )
    line["memory_ratio"] = round(statistics.median(r["ours"]["peak_mb"] / r["diffusers"]["peak_mb"] for r in rounds), 3)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
