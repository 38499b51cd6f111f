"""The main job inside a real ComfyUI (marker ``comfy``): scripts/run_workflow.py runs an example workflow headless with
--tiny, names its interpreter, passes --cpu on a machine without a GPU, shows the sampler's steps while it runs and
writes its image beside an earlier one without replacing it; a workflow ComfyUI refuses stops with exit 1 and
ComfyUI's log kept in the output folder.

The runner's ``main`` runs in this process on the session's server (tests/comfy/session_runner.py, the ``runner``
fixture).
"""

from __future__ import annotations

import copy
import json

import pytest
from workflow_latents import prompts_of

pytestmark = pytest.mark.comfy
STEPS = 2
PREFIX = "PixArtSigmaMainJob"  # its own image prefix: the shared server numbers each prefix's images from 00001


def small_prompt() -> dict:
    """The 1024 px example at 256 px and STEPS steps, saving its image as PREFIX."""
    prompt = copy.deepcopy(prompts_of("examples")["pixart_sigma_1024"])
    for node in prompt.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = PREFIX
        elif node["class_type"] == "PixArtSigmaResolution":
            node["inputs"]["base"] = "256"
        elif node["class_type"] == "PixArtSigmaSampler":
            node["inputs"]["steps"] = STEPS
    return prompt


def test_main_job_shows_progress_and_keeps_earlier_images(comfyui, runner, tmp_path):
    workflow = tmp_path / "small.json"
    workflow.write_text(json.dumps(small_prompt()))
    out = tmp_path / "out"
    out.mkdir()
    earlier, new = out / f"{PREFIX}_00001_.png", out / f"{PREFIX}_00001_-2.png"
    earlier.write_bytes(b"an earlier run")
    code, log = runner(str(workflow), "--comfy", str(comfyui.root), "--out", str(out), "--tiny")
    assert code == 0, log
    assert "interpreter: " in log and "torch " in log
    if "no GPU -> --cpu" in log:
        assert "starting ComfyUI with --cpu" in log
    for step in range(1, STEPS + 1):
        assert f"node 6 PixArtSigmaSampler: step {step}/{STEPS}" in log
    assert "node 8 VAEDecode" in log
    assert earlier.read_bytes() == b"an earlier run"
    assert new.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {new}" in log


def test_refused_workflow_keeps_comfyui_log(comfyui, runner, tmp_path):
    prompt = small_prompt()
    prompt["6"]["inputs"]["steps"] = 0  # below the widget's minimum: ComfyUI refuses the prompt
    workflow = tmp_path / "refused.json"
    workflow.write_text(json.dumps(prompt))
    out, models = tmp_path / "out", tmp_path / "no-models"
    models.mkdir()
    code, log = runner(str(workflow), "--comfy", str(comfyui.root), "--out", str(out), "--models", str(models))
    assert code == 1, log
    assert "PromptRejected" in log
    kept = sorted(out.glob("comfyui-*.log"))
    assert len(kept) == 1 and f"ComfyUI's log: {kept[0]}" in log
    assert "To see the GUI go to" in kept[0].read_text()
