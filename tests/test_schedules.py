"""Few-step and v-prediction sampling recipes equal diffusers' pipelines with the named schedulers (fp32 <= 1e-4
relative), and the checkpoints they run (42-block Sigma, alpha-512 without micro-conditions) load from every format."""

import pytest
import torch
from dit_fixtures import (
    inputs,
    max_rel_error,
    official_state_dict,
    reference_forward,
    tiny_config,
    write_diffusers_folder,
    write_official_pth,
    write_safetensors,
)

from pixart import load_dit
from pixart.sampling import (
    RECIPES,
    NoiseSchedule,
    Recipe,
    lcm_timesteps,
    pixart_denoiser,
    sample,
    sample_two_stage,
    spaced_timesteps,
)

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
LOAD_TOL = 1e-5
SIGMA_900M = {"depth": 42}  # tiny stand-in for PixArt-Sigma-900M: the 1024 model with 42 blocks
ALPHA_512 = {"family": "alpha", "caption_tokens": 120, "sample_size": 64, "pe_interpolation": 1.0}
ALPHA_1024_MS = {"sample_size": 128, "pe_interpolation": 2.0}  # micro-conditions: diffusers needs sample_size 128


def _embeddings(config, batch=2, tokens=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, tokens, config.caption_channels, generator=g)
    neg = torch.randn(batch, tokens, config.caption_channels, generator=g)
    mask = torch.ones(batch, tokens)
    mask[-1, 4:] = 0
    neg_mask = torch.zeros(batch, tokens)
    neg_mask[:, :2] = 1
    return y, mask, neg, neg_mask


def _pipeline(config, reference, scheduler):
    cls = diffusers.PixArtAlphaPipeline if config.family == "alpha" else diffusers.PixArtSigmaPipeline
    pipe = cls(tokenizer=None, text_encoder=None, vae=None, transformer=reference, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_pipeline(pipe, latents, embeddings, cfg=1.0, seed=None, **call):
    y, mask, neg, neg_mask = embeddings
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    guided = {"negative_prompt_embeds": neg, "negative_prompt_attention_mask": neg_mask} if cfg > 1 else {}
    guided["negative_prompt"] = None
    with torch.no_grad():
        return pipe(
            prompt_embeds=y,
            prompt_attention_mask=mask,
            guidance_scale=cfg,
            latents=latents.clone(),
            height=8 * latents.shape[-2],
            width=8 * latents.shape[-1],
            output_type="latent",
            use_resolution_binning=False,
            generator=generator,
            **guided,
            **call,
        ).images


def _run_ours(recipe, model, latents, embeddings, seed=None, **kwargs):
    y, mask, neg, neg_mask = embeddings
    denoise = pixart_denoiser(model, y, mask, neg, neg_mask, recipe.cfg)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return sample(recipe, denoise, latents.clone(), generator, **kwargs)


def _scheduler(cls, **config):
    return cls(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", **config)


# ---------------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("zsnr", [False, True])
def test_noise_schedule_matches_diffusers(zsnr):
    reference = _scheduler(diffusers.DPMSolverMultistepScheduler, rescale_betas_zero_snr=zsnr)
    ours = NoiseSchedule(zero_terminal_snr=zsnr)
    assert torch.allclose(ours.sampling_alphas_cumprod().float(), reference.alphas_cumprod, rtol=1e-5, atol=1e-9)
    raw = _scheduler(diffusers.LCMScheduler, rescale_betas_zero_snr=zsnr).alphas_cumprod
    assert torch.allclose(ours.alphas_cumprod().float(), raw, rtol=1e-5, atol=1e-9)
    assert (ours.alphas_cumprod()[-1].item() == 0) == zsnr


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 4, 7, 20, 50])
def test_spaced_timesteps_match_diffusers(spacing, steps):
    reference = _scheduler(diffusers.DPMSolverMultistepScheduler, timestep_spacing=spacing, steps_offset=1)
    reference.set_timesteps(steps)
    assert spaced_timesteps(steps, spacing, steps_offset=1) == reference.timesteps.tolist()


@pytest.mark.parametrize("steps", [1, 2, 4, 7, 8, 50])
def test_lcm_timesteps_match_diffusers(steps):
    for spacing in ("leading", "trailing"):  # LCMScheduler reads no timestep_spacing: Flash's 'trailing' is a no-op
        reference = _scheduler(diffusers.LCMScheduler, timestep_spacing=spacing)
        reference.set_timesteps(steps)
        assert lcm_timesteps(steps) == reference.timesteps.tolist()
    assert lcm_timesteps(4) == [999, 759, 499, 259]


def test_recipe_validation():
    with pytest.raises(ValueError, match="one_step recipe takes 1 step"):
        Recipe("one_step", 2)
    with pytest.raises(ValueError, match="solver must be one of"):
        Recipe("euler", 2)
    with pytest.raises(ValueError, match="prediction must be one of"):
        NoiseSchedule(prediction="sample")
    with pytest.raises(ValueError, match="needs negative caption states"):
        pixart_denoiser(torch.nn.Identity(), torch.zeros(1, 1, 1), cfg=2.0)


# ---------------------------------------------------------------------------------------------------- loading


def _write(kind, tmp_path, reference, config):
    official = official_state_dict(reference, config)
    if kind == "pth":
        return write_official_pth(tmp_path / "model.pth", official)
    if kind == "safetensors-official":
        return write_safetensors(tmp_path / "model.safetensors", official_state_dict(reference, config, False))
    if kind == "safetensors-diffusers":
        return write_safetensors(tmp_path / "model.safetensors", reference.state_dict())
    if kind == "safetensors-comfy":
        return write_safetensors(tmp_path / "m.safetensors", official, prefix="model.diffusion_model.")
    if kind == "diffusers-folder-bin":
        reference.save_pretrained(tmp_path / "transformer", safe_serialization=False)
        (tmp_path / "model_index.json").write_text('{"_class_name": "PixArtAlphaPipeline"}')
        return tmp_path
    return write_diffusers_folder(tmp_path, reference, family=config.family)


FORMATS = ["pth", "safetensors-official", "safetensors-diffusers", "safetensors-comfy", "diffusers-folder"]


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize("shape", ["sigma-900m", "alpha-512"])
def test_checkpoint_loads_and_equals_diffusers(tmp_path, kind, shape, tiny_models):
    """Folders and official .pth files say everything; bare safetensors need the sizes (as for alpha-512, whose
    weights have the same shapes as Sigma-1024's: choose the variant)."""
    changes = SIGMA_900M if shape == "sigma-900m" else ALPHA_512
    config, reference, _ = tiny_models(shared=True, **changes)
    path = _write(kind, tmp_path, reference, config)
    variant = {"num_heads": config.num_heads}
    if kind.startswith("safetensors"):
        fields = ("family", "caption_tokens", "sample_size", "pe_interpolation")
        variant.update({k: getattr(config, k) for k in fields})
    model = load_dit(path, variant)
    assert model.config == config
    x, t, y, mask = inputs(config, 24, 32)
    with torch.no_grad():
        got = model(x, t, y, mask)
    assert max_rel_error(got, reference_forward(reference, x, t, y, mask)) <= LOAD_TOL


def test_alpha_512_diffusers_pipeline_folder_with_bin_weights(tmp_path, tiny_models):
    """The PixArt-alpha-DMD-XL-2-512x512 layout: a pipeline folder, transformer weights as a .bin pickle."""
    config, reference, _ = tiny_models(shared=True, **ALPHA_512)
    model = load_dit(_write("diffusers-folder-bin", tmp_path, reference, config), {"num_heads": config.num_heads})
    assert model.config == config
    x, t, y, mask = inputs(config, 16, 16)
    with torch.no_grad():
        assert max_rel_error(model(x, t, y, mask), reference_forward(reference, x, t, y, mask)) <= LOAD_TOL


# ---------------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("clip", [None, 1.0], ids=["no-clip", "clip"])
def test_dmd_one_step_matches_ddpm_pipeline(clip, tiny_models):
    """PixArt-alpha-DMD-512: DDPMScheduler, timesteps=[400], CFG 1, x_0 from unit-variance noise."""
    config, reference, ours = tiny_models(shared=True, **ALPHA_512)
    latents, embeddings = torch.randn(2, 4, 16, 16), _embeddings(config)
    scheduler = _scheduler(diffusers.DDPMScheduler, clip_sample=clip is not None)
    expected = _run_pipeline(_pipeline(config, reference, scheduler), latents, embeddings, timesteps=[400])
    recipe = Recipe("one_step", 1, timestep=400, clip_sample=clip)
    got = _run_ours(recipe, ours, latents, embeddings)
    assert max_rel_error(got, expected) <= TOL
    if clip is None:
        assert max_rel_error(_run_ours(RECIPES["alpha-dmd-512"], ours, latents, embeddings), expected) <= TOL


@pytest.mark.parametrize("timestep", [400, 250])
def test_nitro_one_step_matches_sigma_pipeline(timestep, tiny_models):
    """Nitro-1-PixArt (Sigma-1024 weights): one step at a fixed timestep (a setting), no CFG."""
    config, reference, ours = tiny_models(shared=True)
    latents, embeddings = torch.randn(2, 4, 16, 24), _embeddings(config)
    scheduler = _scheduler(diffusers.DDPMScheduler, clip_sample=False)
    expected = _run_pipeline(_pipeline(config, reference, scheduler), latents, embeddings, timesteps=[timestep])
    recipe = Recipe("one_step", 1, timestep=timestep)
    assert max_rel_error(_run_ours(recipe, ours, latents, embeddings), expected) <= TOL


@pytest.mark.parametrize("name,steps", [("lcm", 4), ("lcm", 2), ("flash-pixart", 4)])
def test_lcm_matches_lcm_pipeline(name, steps, tiny_models):
    """PixArt-LCM (alpha-1024-MS, micro-conditions) and Flash-PixArt: LCMScheduler with its boundary conditions and
    generator-seeded noise between steps, no CFG (Flash passes guidance_scale 0 and trailing spacing)."""
    config, reference, ours = tiny_models(shared=True, micro=True, **ALPHA_1024_MS)
    latents, embeddings = torch.randn(2, 4, 16, 16), _embeddings(config)
    spacing = "trailing" if name == "flash-pixart" else "leading"
    scheduler = _scheduler(diffusers.LCMScheduler, timestep_spacing=spacing)
    cfg = 0.0 if name == "flash-pixart" else 1.0
    pipe = _pipeline(config, reference, scheduler)
    expected = _run_pipeline(pipe, latents, embeddings, cfg=cfg, seed=7, num_inference_steps=steps)
    recipe = RECIPES[name] if steps == 4 else Recipe("lcm", steps)
    got = _run_ours(recipe, ours, latents, embeddings, seed=7)
    assert max_rel_error(got, expected) <= TOL
    if steps > 1:  # the injected noise matters: another seed gives another result
        assert max_rel_error(_run_ours(recipe, ours, latents, embeddings, seed=8), expected) > 1e-2


def test_yoso_one_step_v_prediction_matches_lcm_pipeline(tiny_models):
    """YOSO-PixArt-alpha: LCMScheduler with prediction_type v_prediction, 1 step (timestep 999)."""
    config, reference, ours = tiny_models(shared=True, micro=True, **ALPHA_1024_MS)
    latents, embeddings = torch.randn(2, 4, 16, 16), _embeddings(config)
    scheduler = _scheduler(diffusers.LCMScheduler, prediction_type="v_prediction")
    expected = _run_pipeline(_pipeline(config, reference, scheduler), latents, embeddings, num_inference_steps=1)
    assert max_rel_error(_run_ours(RECIPES["yoso"], ours, latents, embeddings), expected) <= TOL


@pytest.mark.parametrize("steps", [20, 8])
def test_sigma_reference_dpm_solver_matches_pipeline(steps, tiny_models):
    """The Sigma default: DPMSolverMultistepScheduler (linspace, 2M, lower-order final), CFG 4.5."""
    config, reference, ours = tiny_models(shared=True)
    latents, embeddings = torch.randn(2, 4, 16, 16), _embeddings(config)
    scheduler = _scheduler(diffusers.DPMSolverMultistepScheduler)
    pipe = _pipeline(config, reference, scheduler)
    expected = _run_pipeline(pipe, latents, embeddings, cfg=4.5, num_inference_steps=steps)
    recipe = Recipe("dpmpp_2m", steps, cfg=4.5)
    assert max_rel_error(_run_ours(recipe, ours, latents, embeddings), expected) <= TOL


def _v_zsnr_scheduler():
    return _scheduler(
        diffusers.DPMSolverMultistepScheduler,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )


def test_900m_v_prediction_zero_snr_matches_pipeline(tiny_models):
    """42 blocks, v-prediction, zero terminal SNR, trailing spacing (starts at t = 999), CFG 4.5."""
    config, reference, ours = tiny_models(shared=True, **SIGMA_900M)
    latents, embeddings = torch.randn(2, 4, 16, 16), _embeddings(config)
    expected = _run_pipeline(
        _pipeline(config, reference, _v_zsnr_scheduler()), latents, embeddings, cfg=4.5, num_inference_steps=4
    )
    recipe = Recipe("dpmpp_2m", 4, schedule=RECIPES["sigma-900m-v"].schedule, spacing="trailing", cfg=4.5)
    assert recipe.timesteps()[0] == 999
    assert max_rel_error(_run_ours(recipe, ours, latents, embeddings), expected) <= TOL


def _diffusers_guided(reference, embeddings, cfg):
    y, mask, neg, neg_mask = embeddings

    def predict(x, t):
        with torch.no_grad():
            out = reference(
                torch.cat([x, x]),
                encoder_hidden_states=torch.cat([neg, y]),
                encoder_attention_mask=torch.cat([neg_mask, mask]),
                timestep=t.expand(2 * x.shape[0]),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            ).sample[:, :4]
        uncond, cond = out.chunk(2)
        return uncond + cfg * (cond - uncond)

    return predict


def test_900m_two_stage_handover_matches_diffusers_schedulers(tiny_models):
    """v0.7 stage-1 / stage-2 experts: stage 1 runs the first 60% of the steps, stage 2 the rest from a fresh
    DPMSolverMultistepScheduler started at that index (diffusers' denoising_end / denoising_start hand-over)."""
    config = tiny_config()  # depth does not matter here: the 42-block model is proven above
    (_, ref1, ours1), (_, ref2, ours2) = tiny_models(seed=0, shared=True), tiny_models(seed=1, shared=True)
    latents, embeddings = torch.randn(1, 4, 16, 16), _embeddings(config, batch=1)
    steps, handover = 10, 0.6
    split = round(steps * handover)
    x = latents.clone()
    for stage, reference in ((0, ref1), (1, ref2)):
        scheduler = _v_zsnr_scheduler()
        scheduler.set_timesteps(steps)
        scheduler.set_begin_index(0 if stage == 0 else split)
        predict = _diffusers_guided(reference, embeddings, 4.5)
        for t in scheduler.timesteps[:split] if stage == 0 else scheduler.timesteps[split:]:
            x = scheduler.step(predict(x, t), t, x, return_dict=False)[0]
    recipe = Recipe("dpmpp_2m", steps, schedule=RECIPES["sigma-900m-v"].schedule, spacing="trailing", cfg=4.5)
    y, mask, neg, neg_mask = embeddings
    stage1 = pixart_denoiser(ours1, y, mask, neg, neg_mask, 4.5)
    stage2 = pixart_denoiser(ours2, y, mask, neg, neg_mask, 4.5)
    with torch.no_grad():
        got = sample_two_stage(recipe, stage1, stage2, latents.clone(), handover)
    assert max_rel_error(got, x) <= TOL
