"""The default-sampler case both suites share (plain torch and ``pixart`` only, so ComfyUI's interpreter imports it):
a tiny PixArt-Sigma file (2 blocks, 2 heads of 72, 48 caption channels) made from a seed, prompt states and the
start noise of a seed. The latent diffusers' PixArtSigmaPipeline gives for it (20 steps, CFG 4.5, its DPM-Solver++,
fp32) is recorded in fixtures/default_sampler_reference.json: tests/test_default_sampler_reference.py recomputes it
with diffusers on every run (``PYTHONPATH=. python tests/test_default_sampler_reference.py`` rewrites it), and
tests/comfy/test_round_two.py checks that PixArt Sigma Sampler with its defaults gives it. diffusers is not in
ComfyUI's interpreter, hence the record; the fingerprint of the weights, prompts and noise makes sure both
interpreters built the same case."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pixart import PixArtConfig, PixArtTransformer
from pixart.embeddings import sincos_2d

FIXTURE = Path(__file__).parent / "fixtures" / "default_sampler_reference.json"
SEED = 42  # the sampler's seed: ComfyUI's start noise is torch.randn(LATENT, generator=manual_seed(SEED))
LATENT = (1, 4, 16, 16)  # 128 x 128 px
STEPS, CFG = 20, 4.5  # PixArtSigmaPipeline's defaults
CONFIG = PixArtConfig(depth=2, hidden_size=144, num_heads=2, caption_channels=48, sample_size=16, pe_interpolation=1.0)


def official_weights() -> dict[str, torch.Tensor]:
    """The tiny DiT under official names, every weight randomised, with the position table and null caption."""
    generator = torch.manual_seed(5)
    with torch.no_grad():
        model = PixArtTransformer(CONFIG)
        for p in model.parameters():  # no zero-initialised gates: every weight matters
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    g = CONFIG.base_grid
    state["pos_embed"] = sincos_2d(CONFIG.hidden_size, g, g, g, CONFIG.pe_interpolation).float()[None]
    state["y_embedder.y_embedding"] = torch.randn(CONFIG.caption_tokens, CONFIG.caption_channels, generator=generator)
    return state


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 7, 48) prompt and (1, 4, 48) negative states: only real tokens, as PixArt Sigma Text Encode gives them."""
    g = torch.Generator().manual_seed(9)
    return torch.randn(1, 7, 48, generator=g), torch.randn(1, 4, 48, generator=g)


def noise() -> torch.Tensor:
    """The start noise of SEED, drawn as ComfyUI's prepare_noise draws it."""
    return torch.randn(LATENT, generator=torch.Generator().manual_seed(SEED))


def fingerprint() -> float:
    """Sum of |x| over the weights, prompts and noise (float64): equal in both interpreters or the case differs."""
    tensors = [*official_weights().values(), *prompts(), noise()]
    return sum(t.double().abs().sum().item() for t in tensors)


def recorded() -> tuple[torch.Tensor, float]:
    """The recorded (1, 4, 16, 16) pipeline latent and the fingerprint of the case it was recorded on."""
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return torch.tensor(data["latent"], dtype=torch.float32).reshape(LATENT), data["fingerprint"]


def record(latent: torch.Tensor) -> None:
    """Write the pipeline's latent and the case's fingerprint to FIXTURE."""
    data = {"fingerprint": fingerprint(), "latent": [float(v) for v in latent.flatten()]}
    FIXTURE.write_text(json.dumps(data) + "\n", encoding="utf-8")
