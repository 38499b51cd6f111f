"""The sampling recipes through ComfyUI's own sampling code, in the session's ComfyUI (marker ``comfy``): PixArt Sigma
Few-Step Schedule + stock SamplerCustomAdvanced (DMD / Nitro one step, LCM 4 steps, YOSO v-prediction 1 step), PixArt
Sigma Noise Schedule + stock KSampler dpmpp_2m (900M v-prediction zero-SNR; also PixArt Sigma DiT Loader alone on a
pipeline folder whose scheduler config says so) and two stock KSamplerAdvanced (the 900M two-stage hand-over) give the
latent of ``pixart.sampling.sample`` / ``sample_two_stage`` on the same tiny weights, prompt states, start noise and
seed (fp32 <= 1e-4 relative); the one-step and LCM samplers refuse a start latent that is not empty.
(tests/test_schedules.py proves those equal to diffusers' pipelines with the named schedulers.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from node_calls import add_model_folder, call, node_result, outputs

pytestmark = pytest.mark.comfy

TOL = 1e-4
SEED = 123
LATENT = (1, 4, 16, 16)  # 128 x 128 pixels


class Setup:
    """Tiny DiT files (written on demand), prompt states, and the pack's nodes and pixart."""

    def __init__(self, comfyui, work):
        import torch

        self.torch = torch
        self.comfyui = comfyui
        self.work = work
        self.schedule = comfyui.module("nodes.schedule")
        self.comfy_model = comfyui.module("nodes.dit.model")
        g = torch.Generator().manual_seed(11)
        self.pos = torch.randn(1, 9, 4096, generator=g)
        self.neg = torch.randn(1, 4, 4096, generator=g)

    def dit_file(self, variant: str, seed: int) -> Path:
        from safetensors.torch import save_file

        from scripts import tiny_weights

        path = self.work / f"tiny_{variant}_{seed}.safetensors"
        if not path.exists():
            save_file(tiny_weights.dit_state_dict(variant, depth=2, seed=seed), str(path))
        return path

    def model(self, variant: str = "sigma-1024", seed: int = 3):
        return self.comfy_model.load_model(self.dit_file(variant, seed), variant, self.torch.float32)

    def conds(self):
        ones = self.torch.ones
        return [[self.pos, {"attention_mask": ones(1, 9)}]], [[self.neg, {"attention_mask": ones(1, 4)}]]

    def empty_latent(self):
        return {"samples": self.torch.zeros(LATENT)}

    def noise(self):
        """The start noise RandomNoise(SEED) draws, and a generator that has drawn it (the LCM step noise's)."""
        generator = self.torch.Generator().manual_seed(SEED)
        return self.torch.randn(LATENT, generator=generator), generator

    def reference(self, variant: str, seed: int, cfg: float):
        """``pixart``'s denoiser on the same file and prompt states."""
        import pixart
        from pixart.sampling import pixart_denoiser

        model = pixart.load_dit(self.dit_file(variant, seed), variant, self.torch.float32)
        ones = self.torch.ones
        return pixart_denoiser(model, self.pos, ones(1, 9), self.neg, ones(1, 4), cfg)


@pytest.fixture(scope="module")
def s(comfyui, tmp_path_factory) -> Setup:
    return Setup(comfyui, tmp_path_factory.mktemp("recipes"))


def scale_of(model) -> float:
    return model.model.latent_format.scale_factor


def assert_close(got, want, what: str) -> None:
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"{what}: max relative difference {err:.2e}")
    assert err <= TOL, f"{what}: max relative difference {err:.2e} > {TOL:.0e}"


def custom_advanced(s: Setup, model, recipe: str, latent=None, steps: int = 0, timestep: int = 400, cfg: float = 1.0):
    """Few-Step Schedule -> SamplerCustomAdvanced (RandomNoise SEED, CFGGuider), as the example workflows wire it;
    returns the x_0 latent in the model's sampling scale."""
    import comfy_extras.nodes_custom_sampler as custom

    sampler, sigmas = outputs(s.schedule.PixArtSigmaFewStepSchedule.execute(model, recipe, steps, timestep))
    positive, negative = s.conds()
    (noise,) = call(custom.RandomNoise, noise_seed=SEED)
    (guider,) = call(custom.CFGGuider, model=model, positive=positive, negative=negative, cfg=cfg)
    out, _ = call(
        custom.SamplerCustomAdvanced,
        noise=noise,
        guider=guider,
        sampler=sampler,
        sigmas=sigmas,
        latent_image=latent or s.empty_latent(),
    )
    return out["samples"] * scale_of(model)


def noise_schedule(s: Setup, model, prediction: str, zsnr: bool):
    return node_result(s.schedule.PixArtSigmaNoiseSchedule.execute(model, prediction, zsnr))


# --- checks ---------------------------------------------------------------------------------------------------------


def test_dmd_one_step(s: Setup) -> None:
    """alpha-DMD-512 (an alpha-512 file): one step at timestep 400 from unit-variance noise, CFG 1."""
    from pixart.sampling import RECIPES, sample

    got = custom_advanced(s, s.model("alpha-512"), "alpha-dmd-512")
    noise, _ = s.noise()
    with s.torch.no_grad():
        want = sample(RECIPES["alpha-dmd-512"], s.reference("alpha-512", 3, 1.0), noise)
    assert_close(got, want, "DMD one step")


def test_nitro_timestep(s: Setup) -> None:
    """Nitro-1 at another timestep (the node's setting) equals the recipe at that timestep."""
    from pixart.sampling import RECIPES, sample

    got = custom_advanced(s, s.model(), "nitro-1", timestep=250)
    noise, _ = s.noise()
    recipe = dataclasses.replace(RECIPES["nitro-1"], timestep=250)
    with s.torch.no_grad():
        want = sample(recipe, s.reference("sigma-1024", 3, 1.0), noise)
    assert_close(got, want, "Nitro one step at timestep 250")


def test_lcm_four_steps(s: Setup) -> None:
    """PixArt-LCM: 4 LCM steps (999, 759, 499, 259), boundary conditions, step noise continuing the seed's
    generator, CFG 1."""
    from pixart.sampling import RECIPES, sample

    got = custom_advanced(s, s.model(), "lcm")
    noise, generator = s.noise()
    with s.torch.no_grad():
        want = sample(RECIPES["lcm"], s.reference("sigma-1024", 3, 1.0), noise, generator)
    assert_close(got, want, "LCM 4 steps")


def test_yoso_v_one_step(s: Setup) -> None:
    """YOSO: LCM v-prediction, 1 step, on a MODEL the Noise Schedule node made v-prediction; the same recipe on an
    epsilon MODEL is refused with the fix named."""
    from pixart.sampling import RECIPES, sample

    try:
        custom_advanced(s, s.model(), "yoso")
        raise AssertionError("the yoso recipe ran on an epsilon MODEL")
    except ValueError as e:
        assert "v_prediction" in str(e) and "PixArt Sigma Noise Schedule" in str(e), e
    got = custom_advanced(s, noise_schedule(s, s.model(), "v_prediction", False), "yoso")
    noise, generator = s.noise()
    with s.torch.no_grad():
        want = sample(RECIPES["yoso"], s.reference("sigma-1024", 3, 1.0), noise, generator)
    assert_close(got, want, "YOSO v-prediction 1 step")


def ksampler_900m(s: Setup, model):
    """Stock KSampler dpmpp_2m / simple (trailing spacing), CFG 4.5, 4 steps: the x_0 latent in sampling scale."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    positive, negative = s.conds()
    (out,) = call(
        comfy_nodes.KSampler,
        model=model,
        seed=SEED,
        steps=4,
        cfg=4.5,
        sampler_name="dpmpp_2m",
        scheduler="simple",
        positive=positive,
        negative=negative,
        latent_image=s.empty_latent(),
        denoise=1.0,
    )
    return out["samples"] * scale_of(model)


def test_900m_v_zsnr_ksampler(s: Setup) -> None:
    """The v-prediction 900M: Noise Schedule (v, zero terminal SNR) + stock KSampler dpmpp_2m / simple (trailing
    spacing), CFG 4.5, 4 steps, equals the sigma-900m-v recipe."""
    from pixart.sampling import RECIPES, sample

    got = ksampler_900m(s, noise_schedule(s, s.model(), "v_prediction", True))
    noise, _ = s.noise()
    recipe = dataclasses.replace(RECIPES["sigma-900m-v"], steps=4)
    with s.torch.no_grad():
        want = sample(recipe, s.reference("sigma-1024", 3, 4.5), noise)
    assert_close(got, want, "900M v-prediction zero-SNR, KSampler dpmpp_2m")


def pipeline_folder(s: Setup, scheduler: dict) -> str:
    """A diffusers pipeline folder in WORK of the sigma-1024 tiny file (seed 3) with ``scheduler`` as its
    scheduler/scheduler_config.json, written as diffusers writes it (``-Infinity`` included); its loader name."""
    import json

    from safetensors.torch import save_file

    import pixart
    from pixart.checkpoints.keymap import diffusers_config, official_to_diffusers
    from scripts import tiny_weights

    root = s.work / "tiny_900m_pipeline"
    (root / "transformer").mkdir(parents=True)
    (root / "scheduler").mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    config = pixart.VARIANTS["sigma-1024"].replace(depth=2)
    transformer = {"_class_name": "PixArtTransformer2DModel", **diffusers_config(config)}
    (root / "transformer" / "config.json").write_text(json.dumps(transformer))
    state = tiny_weights.dit_state_dict("sigma-1024", depth=2, seed=3)
    state.pop("y_embedder.y_embedding")  # diffusers' transformer has no null caption
    weights = official_to_diffusers(state)
    save_file(weights, str(root / "transformer" / "diffusion_pytorch_model.safetensors"))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return "tiny_900m_pipeline/"


def test_900m_pipeline_folder(s: Setup, monkeypatch) -> None:
    """PixArt Sigma DiT Loader on a pipeline folder whose scheduler config says v_prediction, zero terminal SNR and
    its own betas gives a v-prediction MODEL on that schedule: stock KSampler dpmpp_2m equals the sigma-900m-v recipe
    on the folder's schedule. The Noise Schedule node on top overrides prediction and zero terminal SNR and keeps the
    folder's betas; a single file loads on ComfyUI's default epsilon schedule."""
    from pixart.sampling import RECIPES, NoiseSchedule, sample

    model_glue = s.comfyui.module("nodes.dit.model")
    loader = s.comfyui.module("nodes.dit").PixArtSigmaDiTLoader
    add_model_folder(monkeypatch, "diffusion_models", s.work)
    own = {"beta_start": 0.0002, "beta_end": 0.015, "num_train_timesteps": 1000}
    scheduler = {
        "_class_name": "DPMSolverMultistepScheduler",
        "beta_schedule": "linear",
        "lambda_min_clipped": float("-inf"),
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        **own,
    }
    name = pipeline_folder(s, scheduler)
    model = node_result(loader.execute(name, "sigma-1024", "fp32", "off", 2, "auto"))
    schedule = NoiseSchedule("v_prediction", True, own["beta_start"], own["beta_end"], own["num_train_timesteps"])
    assert model_glue.prediction_of(model) == "v_prediction"
    carried = model_glue.noise_schedule_of  # the pack's NoiseSchedule (another class than pixart's here)
    assert dataclasses.asdict(carried(model)) == dataclasses.asdict(schedule)
    got = ksampler_900m(s, model)
    noise, _ = s.noise()
    recipe = dataclasses.replace(RECIPES["sigma-900m-v"], steps=4, schedule=schedule)
    with s.torch.no_grad():
        want = sample(recipe, s.reference("sigma-1024", 3, 4.5), noise)
    assert_close(got, want, "900M pipeline folder (its scheduler config), KSampler dpmpp_2m")

    eps = noise_schedule(s, model, "epsilon", False)
    assert model_glue.prediction_of(eps) == "epsilon"
    assert dataclasses.asdict(carried(eps)) == dataclasses.asdict(NoiseSchedule(beta_start=0.0002, beta_end=0.015))
    sigmas = eps.get_model_object("model_sampling").sigmas.double()
    assert s.torch.allclose(sigmas, NoiseSchedule(beta_start=0.0002, beta_end=0.015).sigmas(), rtol=1e-6)
    plain = node_result(loader.execute(s.dit_file("sigma-1024", 3).name, "sigma-1024", "fp32", "off", 2, "auto"))
    assert carried(plain) is None and model_glue.prediction_of(plain) == "epsilon"


def test_900m_two_stage(s: Setup) -> None:
    """The 900M two-stage hand-over: stage-1 and stage-2 files, each through the Noise Schedule node, two stock
    KSamplerAdvanced (steps 0-2 with leftover noise, then 2-4 without added noise) equal ``sample_two_stage``."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py
    from pixart.sampling import RECIPES, sample_two_stage

    positive, negative = s.conds()
    latent = s.empty_latent()
    stages = [(3, True, 0, 2), (4, False, 2, 10000)]
    for seed, first, start, end in stages:
        (latent,) = call(
            comfy_nodes.KSamplerAdvanced,
            model=noise_schedule(s, s.model(seed=seed), "v_prediction", True),
            add_noise="enable" if first else "disable",
            noise_seed=SEED,
            steps=4,
            cfg=4.5,
            sampler_name="dpmpp_2m",
            scheduler="simple",
            positive=positive,
            negative=negative,
            latent_image=latent,
            start_at_step=start,
            end_at_step=end,
            return_with_leftover_noise="enable" if first else "disable",
        )
    noise, _ = s.noise()
    recipe = dataclasses.replace(RECIPES["sigma-900m-v"], steps=4)
    stage1, stage2 = (s.reference("sigma-1024", seed, 4.5) for seed in (3, 4))
    with s.torch.no_grad():
        want = sample_two_stage(recipe, stage1, stage2, noise, handover=0.5)
    assert_close(latent["samples"] * scale_of(s.model()), want, "900M two-stage hand-over at 2 of 4 steps")


def test_non_empty_latent_refused(s: Setup) -> None:
    """The one-step and LCM samplers refuse a start latent that is not empty (their unit-variance start would be
    wrong); an empty one runs."""
    latent = {"samples": s.torch.zeros(LATENT)}
    latent["samples"][0, 0, 0, 0] = 0.5
    for recipe in ("alpha-dmd-512", "lcm"):
        try:
            custom_advanced(s, s.model(), recipe, latent=latent)
            raise AssertionError(f"{recipe}: a non-empty start latent was sampled")
        except ValueError as e:
            assert "start latent is not empty" in str(e) and "PixArt Sigma Few-Step Schedule" in str(e), e
    assert s.torch.isfinite(custom_advanced(s, s.model(), "lcm")).all()
