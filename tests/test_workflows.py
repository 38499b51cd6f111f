"""The example workflows as files: each UI file (as the frontend saves it) has its API twin, decodes with its
family's VAE, and the recipe examples are wired as their references sample. Checked for the examples shipped now and
for the four shipped with 0.1 (tests/fixtures/workflows_v0_1/, kept as saved). Their widget values and links against
the real node schemas are checked inside ComfyUI (tests/comfy/test_workflow_files.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_workflows"
V0_1 = REPO / "tests" / "fixtures" / "workflows_v0_1"
FOLDERS = {"examples": EXAMPLES, "v0_1": V0_1}


def load(name: str, folder: str = "examples") -> tuple[dict, dict]:
    root = FOLDERS[folder]
    return json.loads((root / f"{name}.json").read_text()), json.loads((root / "api" / f"{name}.json").read_text())


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_the_examples_exist(folder):
    names = sorted(p.stem for p in FOLDERS[folder].glob("*.json"))
    assert sorted(p.stem for p in (FOLDERS[folder] / "api").glob("*.json")) == names
    assert len(names) == {"examples": 11, "v0_1": 4}[folder]
    if folder == "examples":
        assert all((EXAMPLES / f"{name}.jpg").is_file() for name in names)
    prompts = {name: load(name, folder)[1] for name in names}
    kinds = {name: {n["class_type"] for n in p.values()} for name, p in prompts.items()}
    inputs = {name: [n["inputs"] for n in p.values()] for name, p in prompts.items()}
    assert any({"PixArtSigmaDiTLoader", "KSampler"} <= k for k in kinds.values()), "no stock-KSampler example"
    assert any(
        i.get("kv_compress", "off") != "off" and i.get("variant") == "sigma-2k" for v in inputs.values() for i in v
    )
    assert any(i.get("model_family") == "alpha" for v in inputs.values() for i in v)
    assert all("SaveImage" in k and {"VAEDecode", "VAEDecodeTiled"} & k for k in kinds.values())


VAE_OF_FAMILY = {"alpha": "vae-ft-mse-840000-ema-pruned.safetensors", "sigma": "sdxl_vae.safetensors"}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_each_example_decodes_with_its_family_vae(folder):
    """PixArt-alpha latents are SD1.5-VAE latents, PixArt-Sigma's SDXL-VAE ones: the wrong VAE gives garbled images."""
    for path in sorted((FOLDERS[folder] / "api").glob("*.json")):
        prompt = json.loads(path.read_text())
        families = {n["inputs"]["model_family"] for n in prompt.values() if n["class_type"] == "PixArtSigmaTextEncode"}
        vaes = {n["inputs"]["vae_name"] for n in prompt.values() if n["class_type"] == "VAELoader"}
        assert len(families) == 1, f"{path.name}: text encodes of several families {families}"
        assert vaes == {VAE_OF_FAMILY[families.pop()]}, f"{path.name}: VAE {vaes}"


def test_the_recipe_examples():
    """One-step (DMD), LCM 4 steps, the 900M two-stage hand-over and 4K, each wired as its reference samples."""
    prompts = {name: load(name)[1] for name in ("pixart_alpha_dmd_one_step", "pixart_alpha_lcm_4_steps",
               "pixart_sigma_900m_two_stage", "pixart_sigma_4k_kv_compress")}  # fmt: skip

    def of(name, kind):
        return [n["inputs"] for n in prompts[name].values() if n["class_type"] == kind]

    for name, recipe in (("pixart_alpha_dmd_one_step", "alpha-dmd-512"), ("pixart_alpha_lcm_4_steps", "lcm")):
        (schedule,) = of(name, "PixArtSigmaFewStepSchedule")
        (guider,) = of(name, "CFGGuider")
        assert schedule["recipe"] == recipe and guider["cfg"] == 1.0 and of(name, "SamplerCustomAdvanced")
    stages = of("pixart_sigma_900m_two_stage", "KSamplerAdvanced")
    assert [(s["start_at_step"], s["end_at_step"], s["return_with_leftover_noise"]) for s in stages] == [
        (0, 10, "enable"),
        (10, 10000, "disable"),
    ]
    assert [s["add_noise"] for s in stages] == ["enable", "disable"]
    assert all(s["model"][0] != stages[0]["model"][0] for s in stages[1:])  # a second (stage-2) MODEL
    schedules = of("pixart_sigma_900m_two_stage", "PixArtSigmaNoiseSchedule")
    assert schedules == [{**s, "prediction": "v_prediction", "zero_terminal_snr": True} for s in schedules]
    assert len(schedules) == 2
    (dit,) = of("pixart_sigma_4k_kv_compress", "PixArtSigmaDiTLoader")
    (resolution,) = of("pixart_sigma_4k_kv_compress", "PixArtSigmaResolution")
    assert dit["variant"] == "sigma-2k" and dit["kv_compress"] != "off" and resolution["base"] == "4096"
    assert of("pixart_sigma_4k_kv_compress", "VAEDecodeTiled")
