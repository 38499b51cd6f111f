"""A diffusers pipeline folder's scheduler/scheduler_config.json gives the noise schedule (``pipeline_noise_schedule``):
configs diffusers writes are read to the schedule diffusers builds from them, a tiny 900M-style pipeline folder (own
betas, v-prediction, zero terminal SNR) samples as diffusers' pipeline loaded from the same folder, anything the
schedule cannot reproduce is a CheckpointError naming the file, and files or folders without a scheduler give None."""

from __future__ import annotations

import json

import pytest
import torch
from dit_fixtures import max_rel_error, reference_model, tiny_config, write_diffusers_folder

from pixart import CheckpointError, load_dit, pipeline_noise_schedule
from pixart.sampling import NoiseSchedule, Recipe, pixart_denoiser, sample

diffusers = pytest.importorskip("diffusers")

V_ZSNR = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
LINEAR = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}  # PixArt's (LCM's defaults differ)
OWN_BETAS = {"beta_start": 0.0002, "beta_end": 0.015, "num_train_timesteps": 800}


def _pipeline_folder(tmp_path, scheduler=None, config: dict | None = None):
    """A pipeline folder: model_index.json, transformer/config.json and scheduler/scheduler_config.json written by
    ``scheduler.save_config`` or, given ``config``, as that JSON text."""
    root = tmp_path / "pipe"
    (root / "transformer").mkdir(parents=True)
    (root / "transformer" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    if scheduler is not None:
        scheduler.save_config(root / "scheduler")
    if config is not None:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    ("cls", "settings"),
    [
        ("DPMSolverMultistepScheduler", {}),
        ("DPMSolverMultistepScheduler", V_ZSNR),
        ("DPMSolverMultistepScheduler", {**V_ZSNR, **OWN_BETAS}),
        ("DDPMScheduler", OWN_BETAS),
        ("LCMScheduler", {"prediction_type": "v_prediction", **LINEAR}),
        ("EulerDiscreteScheduler", {"rescale_betas_zero_snr": True}),
    ],
)
def test_diffusers_config_gives_diffusers_schedule(tmp_path, cls, settings):
    """What diffusers saves (DPM-Solver's with lambda_min_clipped: -Infinity) reads to the schedule diffusers
    builds from the same config: prediction, zero terminal SNR, betas, training steps, alpha_bar."""
    scheduler = getattr(diffusers, cls)(**settings)
    schedule = pipeline_noise_schedule(_pipeline_folder(tmp_path, scheduler))
    config = scheduler.config
    assert schedule == NoiseSchedule(
        prediction=config.prediction_type,
        zero_terminal_snr=config.rescale_betas_zero_snr,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        train_steps=config.num_train_timesteps,
    )
    theirs, ours = scheduler.alphas_cumprod, schedule.alphas_cumprod().float()
    assert torch.allclose(ours[:-1], theirs[:-1], rtol=1e-5, atol=1e-9)
    if schedule.zero_terminal_snr:  # 0, or the finite stand-in DPM-Solver and Euler sample with
        assert theirs[-1].item() in (0.0, schedule.sampling_alphas_cumprod()[-1].item())
    else:
        assert torch.allclose(ours[-1], theirs[-1], rtol=1e-5)
    assert (schedule == NoiseSchedule()) == (not settings)


def test_only_the_betas_are_required(tmp_path):
    """prediction_type, rescale_betas_zero_snr and num_train_timesteps have one default in every diffusers class;
    the betas do not, so they must be stated."""
    assert pipeline_noise_schedule(_pipeline_folder(tmp_path, config=LINEAR)) == NoiseSchedule()
    for key in LINEAR:
        config = {k: v for k, v in LINEAR.items() if k != key}
        with pytest.raises(CheckpointError, match=f"scheduler_config.json: '{key}' is missing"):
            pipeline_noise_schedule(_pipeline_folder(tmp_path / key, config=config))


def test_diffusers_lcm_defaults_are_refused(tmp_path):
    """LCMScheduler's own defaults (scaled_linear 0.00085..0.012, the SD betas) are not PixArt's and not linear."""
    folder = _pipeline_folder(tmp_path, diffusers.LCMScheduler())
    with pytest.raises(CheckpointError, match="beta_schedule is 'scaled_linear', expected one of"):
        pipeline_noise_schedule(folder)


def test_900m_style_pipeline_folder_samples_as_diffusers(tmp_path):
    """A tiny pipeline folder (transformer saved by diffusers, a v-prediction zero-SNR scheduler on its own betas):
    load_dit + the folder's schedule + DPM-Solver++ 2M trailing equals PixArtSigmaPipeline with the folder's
    transformer and scheduler, CFG 4.5, 4 steps."""
    config = tiny_config()
    reference = reference_model(config, seed=5)
    folder = write_diffusers_folder(tmp_path / "pipe", reference, family="sigma")
    diffusers.DPMSolverMultistepScheduler(**V_ZSNR, **OWN_BETAS).save_config(folder / "scheduler")

    schedule = pipeline_noise_schedule(folder)
    assert schedule.prediction == "v_prediction" and schedule.zero_terminal_snr and schedule.train_steps == 800
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(1, 4, 16, 16, generator=g)
    y, neg = (torch.randn(1, 7, config.caption_channels, generator=g) for _ in range(2))
    mask, neg_mask = torch.ones(1, 7), torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    pipe = diffusers.PixArtSigmaPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=reference,
        scheduler=diffusers.DPMSolverMultistepScheduler.from_pretrained(folder / "scheduler"),
    )
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = pipe(
            prompt_embeds=y,
            prompt_attention_mask=mask,
            negative_prompt=None,
            negative_prompt_embeds=neg,
            negative_prompt_attention_mask=neg_mask,
            guidance_scale=4.5,
            latents=latents.clone(),
            height=128,
            width=128,
            num_inference_steps=4,
            output_type="latent",
            use_resolution_binning=False,
        ).images
        recipe = Recipe("dpmpp_2m", 4, schedule=schedule, spacing="trailing", cfg=4.5)
        assert recipe.timesteps()[0] == 799
        denoise = pixart_denoiser(load_dit(folder, dtype=torch.float32), y, mask, neg, neg_mask, 4.5)
        got = sample(recipe, denoise, latents.clone())
    assert max_rel_error(got, expected) <= 1e-4


REFUSED = [
    ({"beta_schedule": "scaled_linear"}, "beta_schedule is 'scaled_linear', expected one of ('linear',)"),
    ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule is 'squaredcos_cap_v2'"),
    ({"prediction_type": "sample"}, "prediction_type is 'sample', expected one of ('epsilon', 'v_prediction')"),
    ({"prediction_type": "flow"}, "prediction_type is 'flow'"),
    ({"trained_betas": [0.0001, 0.02]}, "explicit trained_betas, expected null"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "a flow-matching scheduler (FlowMatchEulerDiscreteScheduler)"),
    ({"use_flow_sigmas": True}, "a flow-matching scheduler (use_flow_sigmas)"),
    ({"prediction_type": 1}, "'prediction_type' is 1, expected str"),
    ({"rescale_betas_zero_snr": "true"}, "'rescale_betas_zero_snr' is 'true', expected bool"),
    ({"beta_start": "0.0001"}, "'beta_start' is '0.0001', expected float"),
    ({"beta_end": True}, "'beta_end' is True, expected float"),
    ({"num_train_timesteps": 1000.0}, "'num_train_timesteps' is 1000.0, expected int"),
    ({"num_train_timesteps": 1}, "'num_train_timesteps' is 1, expected 2..100000"),
    ({"beta_end": 1.5}, "'beta_end' is 1.5, expected 0.0..1.0"),
    ({"beta_end": float("inf")}, "'beta_end' is inf, expected float"),
    ({"beta_start": 0.02, "beta_end": 0.01}, "need 0 < beta_start < beta_end < 1, got 0.02 and 0.01"),
    ({"trained_betas": "none"}, "'trained_betas' is 'none', expected list"),
]


@pytest.mark.parametrize(("config", "message"), REFUSED)
def test_unreproducible_config_is_refused(tmp_path, config, message):
    folder = _pipeline_folder(tmp_path, config={**LINEAR, **config})
    with pytest.raises(CheckpointError) as e:
        pipeline_noise_schedule(folder)
    assert str(folder / "scheduler" / "scheduler_config.json") in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_unreadable_config_is_refused(tmp_path, text):
    folder = _pipeline_folder(tmp_path, config=LINEAR)
    (folder / "scheduler" / "scheduler_config.json").write_text(text)
    with pytest.raises(CheckpointError, match="scheduler_config.json: (not valid JSON|expected a JSON object)"):
        pipeline_noise_schedule(folder)


def test_no_pipeline_scheduler_gives_none(tmp_path):
    """A single file, a transformer folder alone (even holding a scheduler/), a pipeline folder without a scheduler
    config, and a pipeline's transformer/ picked on its own: no schedule, the loader keeps ComfyUI's default."""
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"")
    assert pipeline_noise_schedule(single) is None
    alone = tmp_path / "transformer_only"
    (alone / "scheduler").mkdir(parents=True)
    (alone / "config.json").write_text("{}")
    (alone / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    assert pipeline_noise_schedule(alone) is None
    folder = _pipeline_folder(tmp_path)
    assert pipeline_noise_schedule(folder) is None
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**LINEAR, **V_ZSNR}))
    assert pipeline_noise_schedule(folder / "transformer") is None
    assert pipeline_noise_schedule(folder).prediction == "v_prediction"
