"""PixArt ControlNets in a real ComfyUI (marker ``comfy``): PixArt Sigma ControlNet Loader -> stock Apply ControlNet
(hint through a VAE) -> sampling, on tiny random weights, equals ``pixart`` with ``control_hook`` (fp32 <= 1e-5
relative): strength 0 is the run without ControlNet, strength s scales the residuals, start / end percent switch it
per step, two chained ControlNets (official and diffusers-adapter files) add, and with CFG each row gets the control
Apply ControlNet attached to it; a missing VAE and a MODEL that is not ours are refused. The checks run in one process
of ComfyUI's interpreter with the tree of ``$COMFYUI_PATH`` importable (tests/comfy_controlnet_inprocess.py). The
example workflow (LoadImage -> Canny -> Apply ControlNet -> KSampler) runs headless with ``--tiny``.

Run: ``COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python python -m pytest -m comfy
tests/test_comfy_controlnet.py`` (a 0.3.64 tree may need its side packages on ``PYTHONPATH``, which is passed on).
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
SCRIPT = Path(__file__).resolve().parent / "comfy_controlnet_inprocess.py"
RUNNER = Path(__file__).resolve().parents[1] / "scripts" / "run_workflow.py"
CHECKS = ["strength", "percent_range", "chained_add", "cfg_rows", "refusals"]


def test_controlnet_through_apply_controlnet(tmp_path):
    if COMFY is None:
        pytest.skip(WHY)
    run_inprocess(SCRIPT, COMFY, tmp_path, CHECKS, timeout=1800)


def test_example_workflow_runs_with_tiny_models(tmp_path):
    if COMFY is None:
        pytest.skip(WHY)
    prompt = copy.deepcopy(example_prompts()["pixart_sigma_controlnet_canny"])
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=256, height=256)
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    workflow = tmp_path / "controlnet.json"
    workflow.write_text(json.dumps(prompt))
    out = tmp_path / "out"
    cmd = [sys.executable, str(RUNNER), str(workflow), "--comfy", str(COMFY), "--out", str(out), "--tiny"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "node 13 ControlNetApplyAdvanced" in run.stderr, run.stderr[-4000:]
    (image,) = out.glob("PixArtSigmaControlNet_*.png")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
