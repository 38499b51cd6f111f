"""The FLOP count behind the benchmark's matmul-rate fraction equals what torch counts in a real forward, and the
benchmark summarises rounds by medians."""

import importlib.util
from pathlib import Path

import pytest
import torch
from dit_fixtures import tiny_config
from torch.utils.flop_counter import FlopCounterMode

from pixart import KVCompress, PixArtTransformer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_dit.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def written_out_attention(q, k, v, bias):
    """Attention as two batched matmuls, which the flop counter sees."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if bias is not None:
        scores = scores + bias
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("kv", [None, KVCompress("avgpool", 2, layers=(1,))], ids=["off", "avgpool2-block1"])
def test_forward_gflop_matches_counted_flops(bench, kv):
    config = tiny_config()
    model = PixArtTransformer(config, kv_compress=kv, attention=written_out_attention).eval()
    h, w = 12, 20  # latent; the token grid is 6×10
    x = torch.randn(2, 4, h, w)
    y = torch.randn(2, 300, config.caption_channels)
    mask = torch.zeros(2, 300)
    mask[0, : bench.PROMPT_TOKENS] = 1
    mask[1, : bench.NEGATIVE_TOKENS] = 1
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([500.0, 500.0]), y, mask)
    counted = counter.get_total_flops() / 1e9
    expected = bench.forward_gflop(config, (h // 2, w // 2), kv, 2, bench.PROMPT_TOKENS)
    # The formula leaves out the timestep MLPs (a few MFLOP at this width): within 2%.
    assert expected == pytest.approx(counted, rel=0.02)
    assert expected < counted


def _round(ours_seconds, rate, diffusers_seconds, peaks):
    return {
        "matmul": {"matmul_gflops": rate},
        "ours": {"seconds": ours_seconds, "peak_mb": peaks[0]},
        "diffusers": {"seconds": diffusers_seconds, "peak_mb": peaks[1]},
    }


def test_rounds_are_summarised_by_medians(bench):
    rounds = [_round(1.0, 100.0, 1.5, (10, 20)), _round(2.0, 50.0, 2.2, (12, 21)), _round(1.2, 90.0, 1.5, (11, 22))]
    line = bench.summarise(rounds, gflop=100.0, off_seconds=None)
    assert line["results"] == {"ours": {"seconds": 1.2, "peak_mb": 12}, "diffusers": {"seconds": 1.5, "peak_mb": 22}}
    assert line["speedup_vs_diffusers"] == 1.25  # median of 1.5, 1.1, 1.25
    assert line["ours_matmul_fraction"] == 1.0  # median of 1.0, 1.0, 0.926
    assert line["matmul_gflops"] == 90.0
    error = {"error": "diffusers exited with 1"}
    failed = bench.summarise([{**rounds[0], "diffusers": error}], 100.0, None)
    assert failed["results"]["diffusers"] == error and "speedup_vs_diffusers" not in failed
