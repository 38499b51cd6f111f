"""The recorded default-sampler reference (tests/sampler_reference.py) is diffusers' PixArtSigmaPipeline output:
its transformer with the tiny weights, its DPM-Solver++ as PixArt-Sigma configures it, 20 steps, CFG 4.5, fp32,
from the recorded noise. The comfy suite compares PixArt Sigma Sampler's defaults with this record."""

from __future__ import annotations

import pytest
import sampler_reference as case
import torch
from cache_fixtures import reference_pipeline
from dit_fixtures import max_rel_error

from pixart.checkpoints.keymap import diffusers_config, official_to_diffusers

pytest.importorskip("diffusers")


def pipeline_latent() -> torch.Tensor:
    """PixArtSigmaPipeline on the case (prompt states zero-padded to 300 tokens with their masks)."""
    from diffusers import PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(**diffusers_config(case.CONFIG)).eval()
    weights = case.official_weights()
    del weights["pos_embed"], weights["y_embedder.y_embedding"]  # diffusers computes the table, keeps no null caption
    transformer.load_state_dict(official_to_diffusers(weights), strict=True)
    positive, negative = case.prompts()

    def padded(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.zeros(1, case.CONFIG.caption_tokens)
        mask[:, : states.shape[1]] = 1
        return torch.nn.functional.pad(states, (0, 0, 0, case.CONFIG.caption_tokens - states.shape[1])), mask

    (embeds, mask), (negative_embeds, negative_mask) = padded(positive), padded(negative)
    with torch.no_grad():
        return reference_pipeline(transformer)(
            negative_prompt=None,
            prompt_embeds=embeds,
            prompt_attention_mask=mask,
            negative_prompt_embeds=negative_embeds,
            negative_prompt_attention_mask=negative_mask,
            latents=case.noise(),
            num_inference_steps=case.STEPS,
            guidance_scale=case.CFG,
            height=8 * case.LATENT[2],
            width=8 * case.LATENT[3],
            output_type="latent",
            use_resolution_binning=False,
        ).images


def test_the_record_is_the_pipeline_output():
    latent, fingerprint = case.recorded()
    assert case.fingerprint() == pytest.approx(fingerprint, rel=1e-12)
    got = pipeline_latent()
    assert got.shape == case.LATENT and torch.isfinite(got).all() and got.abs().max() > 0.1
    assert max_rel_error(latent, got) <= 1e-6


if __name__ == "__main__":
    case.record(pipeline_latent())
