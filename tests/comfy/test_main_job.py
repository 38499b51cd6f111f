"""The main job inside a real ComfyUI (marker ``comfy``): scripts/run_workflow.py runs an example workflow headless with
--tiny, names its interpreter, passes --cpu on a machine without a GPU, shows the sampler's steps while it runs and
writes its image beside an earlier one without replacing it; a workflow ComfyUI refuses stops with exit 1 and
ComfyUI's log kept in the output folder.

The runner's ``main`` runs in this process with the session's server in place of the one it would start
(``SessionServer``): everything else (interpreter choice, tiny weights, queueing, progress over the websocket, image
and log files) is the runner's own; starting a server is what every other test of the session already exercises.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
from workflow_latents import prompts_of

from scripts import run_workflow

pytestmark = pytest.mark.comfy
STEPS = 2
PREFIX = "PixArtSigmaMainJob"  # its own image prefix: the shared server numbers each prefix's images from 00001


class SessionServer:
    """Stands in for ``ComfyServer`` in scripts/run_workflow.py: built with the same arguments, it is the session's
    running server (same tree and interpreter), which it neither prepares, starts nor stops."""

    def __init__(self, shared):
        self.shared, self.built_with = shared, []

    def __call__(self, comfy, base, python, cpu=True, extra_args=(), env=None):
        self.built_with.append({"comfy": comfy, "python": python, "cpu": cpu})
        return self

    def prepare(self, models=None) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def stop(self) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self.shared, name)


@pytest.fixture
def runner(server, monkeypatch, caplog):
    """run_workflow.main(argv) -> (exit code, its log)."""
    stand_in = SessionServer(server)
    monkeypatch.setattr(run_workflow, "ComfyServer", stand_in)
    caplog.set_level(logging.INFO)

    def run(*argv: str) -> tuple[int, str]:
        code = run_workflow.main(list(argv))
        assert stand_in.built_with, "the runner started no server"
        return code, caplog.text

    return run


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
