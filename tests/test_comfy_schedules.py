"""The sampling recipes through ComfyUI (marker ``comfy``): PixArt Sigma Few-Step Schedule + stock
SamplerCustomAdvanced (DMD / Nitro one step, LCM 4 steps, YOSO v-prediction 1 step), PixArt Sigma Noise Schedule +
stock KSampler dpmpp_2m (900M v-prediction zero-SNR) and two stock KSamplerAdvanced (the 900M two-stage hand-over)
give the latent of ``pixart.sampling`` on the same tiny weights, prompt states, start noise and seed (fp32 <= 1e-4
relative); the one-step and LCM samplers refuse a start latent that is not empty. Each check runs in a fresh process
of ComfyUI's interpreter with the tree of ``$COMFYUI_PATH`` importable (tests/comfy_schedules_inprocess.py).

Run: ``COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python python -m pytest -m comfy
tests/test_comfy_schedules.py`` (a 0.3.64 tree may need its side packages on ``PYTHONPATH``, which is passed on).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_host import find_comfy

pytestmark = pytest.mark.comfy
COMFY, WHY = find_comfy()
SCRIPT = Path(__file__).resolve().parent / "comfy_schedules_inprocess.py"
CHECKS = [
    "dmd_one_step",
    "nitro_timestep",
    "lcm_four_steps",
    "yoso_v_one_step",
    "900m_v_zsnr_ksampler",
    "900m_two_stage",
    "non_empty_latent_refused",
]


@pytest.mark.parametrize("check", CHECKS)
def test_recipe_through_comfyui(check, tmp_path):
    if COMFY is None:
        pytest.skip(WHY)
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    done = subprocess.run(
        [python, str(SCRIPT), str(COMFY), str(tmp_path), check],
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{check} failed in {COMFY}:\n{done.stdout[-2000:]}\n{done.stderr[-6000:]}"
    assert f"{check}: ok" in done.stdout, done.stdout[-2000:]
