"""scripts/run_workflow.py's choices without a ComfyUI: the interpreter (each candidate must import the checkout's
essential requirements; a decoy ``venv/`` beside the checkout that cannot is skipped with the reason; with none, the
runner stops and lists what it tried), the GPU answer behind ``--cpu``, the output names (never overwriting), and the
progress lines built from ComfyUI's websocket messages."""

from __future__ import annotations

import logging
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

from scripts import comfy_checkout, comfy_env
from scripts.comfy_progress import Progress
from scripts.comfy_tree import essential_requirements
from scripts.run_workflow import unique_path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = """comfyui-frontend-package==1.0.0
torch
numpy>=1.25.0  # a comment
safetensors>=0.4.2; python_version >= "3.9"

#non essential dependencies:
kornia>=0.7.1
"""


def fake_checkout(root: Path, requirements: str) -> Path:
    """A folder that passes for a ComfyUI checkout (main.py, comfy/, requirements.txt) under ``root``."""
    comfy = root / "ComfyUI"
    (comfy / "comfy").mkdir(parents=True)
    (comfy / "main.py").write_text("raise SystemExit('not a real ComfyUI')\n")
    (comfy / "requirements.txt").write_text(requirements)
    return comfy


@pytest.fixture
def decoy(tmp_path) -> Path:
    """A bare ``venv/`` beside the checkout (``ComfyUI/../venv``): its python has none of the requirements."""
    venv.create(tmp_path / "venv", with_pip=False, symlinks=sys.platform != "win32")
    return comfy_env.venv_python(tmp_path / "venv")


@pytest.fixture
def no_test_venv(monkeypatch, tmp_path):
    """No $COMFYUI_PYTHON and no finished test venv: the candidates are the venvs found and this interpreter."""
    monkeypatch.delenv("COMFYUI_PYTHON", raising=False)
    monkeypatch.setenv("PIXART_COMFY_VENV", str(tmp_path / "no-test-venv"))


def test_essential_requirements_stop_at_the_non_essential_comment(tmp_path):
    comfy = fake_checkout(tmp_path, REQUIREMENTS)
    assert essential_requirements(comfy) == ["comfyui-frontend-package", "torch", "numpy", "safetensors"]


def test_decoy_venv_beside_the_checkout_is_skipped_with_the_reason(tmp_path, decoy, no_test_venv, caplog):
    comfy = fake_checkout(tmp_path, "torch\nnumpy\nsafetensors\n")
    assert [python for python, _, _ in comfy_checkout.candidates(comfy)] == [str(decoy), sys.executable]
    with caplog.at_level(logging.INFO, logger="comfy_checkout"):
        chosen = comfy_checkout.choose_interpreter(comfy)
    assert chosen.python == sys.executable
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 1, skipped
    assert str(decoy) in skipped[0] and "../venv/" in skipped[0]
    assert "not installed: torch, numpy, safetensors" in skipped[0]


def test_no_usable_interpreter_stops_the_runner_listing_what_it_tried(tmp_path, decoy, no_test_venv):
    comfy = fake_checkout(tmp_path, "torch\nsurely-not-an-installed-distribution\n")
    workflow = REPO / "example_workflows" / "api" / "pixart_sigma_1024.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_workflow.py"), str(workflow), "--comfy", str(comfy)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.stderr
    assert "no interpreter can run ComfyUI" in run.stderr
    assert (
        f"{decoy} (../venv/ of the checkout): not installed: torch, surely-not-an-installed-distribution" in run.stderr
    )
    expected = f"{sys.executable} (the interpreter running this script): not installed: surely-not-an-installed"
    assert expected in run.stderr
    assert not (tmp_path / "output").exists()


def test_an_explicit_interpreter_is_checked_too(tmp_path, decoy, no_test_venv):
    comfy = fake_checkout(tmp_path, "torch\n")
    with pytest.raises(comfy_checkout.NoInterpreter, match=r"--python\): not installed: torch"):
        comfy_checkout.choose_interpreter(comfy, str(decoy))


def test_the_interpreter_reports_the_gpu_that_decides_cpu(tmp_path, no_test_venv):
    comfy = fake_checkout(tmp_path, "torch\n")
    chosen = comfy_checkout.choose_interpreter(comfy, sys.executable)
    assert chosen.torch == torch.__version__
    sees_gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    assert bool(chosen.gpu) == sees_gpu  # "" -> run_workflow passes --cpu


def test_output_names_never_overwrite(tmp_path):
    name = "PixArtSigma_00001_.png"
    assert unique_path(tmp_path, name) == tmp_path / name
    (tmp_path / name).write_bytes(b"first")
    (tmp_path / "PixArtSigma_00001_-2.png").write_bytes(b"second")
    third = unique_path(tmp_path, name)
    assert third == tmp_path / "PixArtSigma_00001_-3.png"
    assert (tmp_path / name).read_bytes() == b"first"


def test_progress_lines_name_the_node_and_the_step(caplog):
    progress = Progress({"6": {"class_type": "PixArtSigmaSampler", "inputs": {}}}, idle_s=0)
    with caplog.at_level(logging.INFO, logger="comfy_progress"):
        progress.handle({"type": "executing", "data": {"node": "6", "prompt_id": "p"}})
        for step in range(1, 4):
            progress.handle({"type": "progress", "data": {"value": step, "max": 3, "node": "6"}})
        progress.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].endswith("node 6 PixArtSigmaSampler")
    assert lines[1].endswith("node 6 PixArtSigmaSampler: step 1/3")
    assert lines[-2].endswith("node 6 PixArtSigmaSampler: step 3/3")  # step 2 came within a second: not shown
    assert len(lines) == 4 and lines[-1].endswith("still running node 6 PixArtSigmaSampler")
    assert all(line.startswith("[") and " s] " in line for line in lines)


def test_without_a_named_comfyui_the_newest_shared_tree_is_used(tmp_path, monkeypatch, no_test_venv, caplog):
    """No --comfy, no $COMFYUI_PATH, not inside ComfyUI/custom_nodes/: the newest tree of ../shared/comfyui/ (what
    the tests use) runs the main job; it is checked like any checkout (here none of its requirements import)."""
    from scripts import run_workflow

    comfy = fake_checkout(tmp_path, "surely-not-an-installed-distribution\n")
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(run_workflow, "find_comfy", lambda explicit: (None, "no ComfyUI found: set COMFYUI_PATH"))
    monkeypatch.setattr(run_workflow.comfy_env, "shared_trees", lambda: [comfy])
    workflow = REPO / "example_workflows" / "api" / "pixart_sigma_1024.json"
    with caplog.at_level(logging.INFO):
        assert run_workflow.main([str(workflow), "--out", str(tmp_path / "out")]) == 2
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"using {comfy}" in messages
    assert f"no interpreter can run ComfyUI at {comfy}" in messages
    assert "python scripts/comfy_env.py" in messages
