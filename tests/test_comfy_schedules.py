"""The sampling recipes through ComfyUI (marker ``comfy``): PixArt Sigma Few-Step Schedule + stock SamplerCustomAdvanced
(DMD / Nitro one step, LCM 4 steps, YOSO v-prediction 1 step), PixArt Sigma Noise Schedule + stock KSampler dpmpp_2m
(900M v-prediction zero-SNR; also PixArt Sigma DiT Loader alone on a pipeline folder whose scheduler config says so) and
two stock KSamplerAdvanced (the 900M two-stage hand-over) give the latent of ``pixart.sampling`` on the same tiny
weights, prompt states, start noise and seed (fp32 <= 1e-4 relative); the one-step and LCM samplers refuse a start
latent that is not empty. Each check runs in a fresh process of ComfyUI's interpreter with the tree of ``$COMFYUI_PATH``
importable (tests/comfy_schedules_inprocess.py).
The recipe example workflows (DMD one step, LCM 4 steps, 900M two-stage, 4K) run headless through
scripts/run_workflow.py --tiny at 256 px and few steps, and write their image.

Run: ``COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python python -m pytest -m comfy
tests/test_comfy_schedules.py`` (a 0.3.64 tree may need its side packages on ``PYTHONPATH``, which is passed on).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_host import example_prompts, find_comfy, run_inprocess

pytestmark = pytest.mark.comfy
COMFY, WHY = find_comfy()
SCRIPT = Path(__file__).resolve().parent / "comfy_schedules_inprocess.py"
CHECKS = [
    "dmd_one_step",
    "nitro_timestep",
    "lcm_four_steps",
    "yoso_v_one_step",
    "900m_v_zsnr_ksampler",
    "900m_pipeline_folder",
    "900m_two_stage",
    "non_empty_latent_refused",
]


@pytest.mark.parametrize("check", CHECKS)
def test_recipe_through_comfyui(check, tmp_path):
    if COMFY is None:
        pytest.skip(WHY)
    run_inprocess(SCRIPT, COMFY, tmp_path, [check])


RUNNER = Path(__file__).resolve().parents[1] / "scripts" / "run_workflow.py"
RECIPE_EXAMPLES = {  # name -> the image file prefix its SaveImage writes
    "pixart_alpha_dmd_one_step": "PixArtAlphaDMD",
    "pixart_alpha_lcm_4_steps": "PixArtAlphaLCM",
    "pixart_sigma_900m_two_stage": "PixArtSigma900M",
    "pixart_sigma_4k_kv_compress": "PixArtSigma4K",
}


def reduced(prompt: dict) -> dict:
    """An example at 256 px (the 4K one: 256 px bins of the same aspect ratio) and 2 steps (the 900M one: 4 steps
    handing over at 2), with the 4K one's tiled decode still cutting the image into tiles."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "PixArtSigmaResolution":
            inputs["base"] = "256"
        elif kind == "PixArtSigmaSampler":
            inputs["steps"] = 2
        elif kind == "KSamplerAdvanced":
            inputs["steps"] = 4
            inputs["end_at_step"] = 2 if inputs["end_at_step"] == 10 else inputs["end_at_step"]
            inputs["start_at_step"] = 2 if inputs["start_at_step"] == 10 else inputs["start_at_step"]
        elif kind == "VAEDecodeTiled":
            inputs["tile_size"], inputs["overlap"] = 128, 32
        elif kind == "PixArtSigmaT5Loader":
            inputs["dtype"] = "fp32"
    return prompt


@pytest.mark.parametrize("name", sorted(RECIPE_EXAMPLES))
def test_recipe_example_runs_headless(name, tmp_path):
    if COMFY is None:
        pytest.skip(WHY)
    workflow = tmp_path / f"{name}.json"
    workflow.write_text(json.dumps(reduced(example_prompts()[name])))
    out = tmp_path / "out"
    cmd = [sys.executable, str(RUNNER), str(workflow), "--comfy", str(COMFY), "--out", str(out), "--tiny"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-6000:]
    (image,) = out.glob(f"{RECIPE_EXAMPLES[name]}_*.png")
    from PIL import Image

    assert Image.open(image).size == (256, 256), name
