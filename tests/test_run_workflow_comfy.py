"""The main job inside a real ComfyUI: scripts/run_workflow.py runs an example workflow headless with --tiny, names
its interpreter, passes --cpu on a machine without a GPU, shows the sampler's steps while it runs and writes its image
beside an earlier one without replacing it; a workflow ComfyUI refuses stops with exit 1 and ComfyUI's log kept in
the output folder."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_host import example_prompts, find_comfy

pytestmark = pytest.mark.comfy
COMFY, WHY = find_comfy()
REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "scripts" / "run_workflow.py"
STEPS = 2


def small_prompt() -> dict:
    """The 1024 px example at 256 px and STEPS steps."""
    prompt = copy.deepcopy(example_prompts()["pixart_sigma_1024"])
    for node in prompt.values():
        if node["class_type"] == "PixArtSigmaResolution":
            node["inputs"]["base"] = "256"
        elif node["class_type"] == "PixArtSigmaSampler":
            node["inputs"]["steps"] = STEPS
    return prompt


def run_runner(workflow: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(RUNNER), str(workflow), "--comfy", str(COMFY), "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=workflow.parent)


@pytest.mark.skipif(COMFY is None, reason=WHY)
def test_main_job_shows_progress_and_keeps_earlier_images(tmp_path):
    workflow = tmp_path / "small.json"
    workflow.write_text(json.dumps(small_prompt()))
    out = tmp_path / "out"
    out.mkdir()
    (out / "PixArtSigma_00001_.png").write_bytes(b"an earlier run")
    run = run_runner(workflow, out, "--tiny")
    log = run.stderr
    assert run.returncode == 0, log
    assert "interpreter: " in log and "torch " in log
    if "no GPU -> --cpu" in log:
        assert "starting ComfyUI with --cpu" in log
    for step in range(1, STEPS + 1):
        assert f"node 6 PixArtSigmaSampler: step {step}/{STEPS}" in log
    assert "node 8 VAEDecode" in log
    assert (out / "PixArtSigma_00001_.png").read_bytes() == b"an earlier run"
    assert (out / "PixArtSigma_00001_-2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out / 'PixArtSigma_00001_-2.png'}" in log


@pytest.mark.skipif(COMFY is None, reason=WHY)
def test_refused_workflow_keeps_comfyui_log(tmp_path):
    prompt = small_prompt()
    prompt["6"]["inputs"]["steps"] = 0  # below the widget's minimum: ComfyUI refuses the prompt
    workflow = tmp_path / "refused.json"
    workflow.write_text(json.dumps(prompt))
    out, models = tmp_path / "out", tmp_path / "no-models"
    models.mkdir()
    run = run_runner(workflow, out, "--models", str(models))  # refused before any model would load
    assert run.returncode == 1, run.stderr
    assert "PromptRejected" in run.stderr
    kept = sorted(out.glob("comfyui-*.log"))
    assert len(kept) == 1 and f"ComfyUI's log: {kept[0]}" in run.stderr
    assert "To see the GUI go to" in kept[0].read_text()
