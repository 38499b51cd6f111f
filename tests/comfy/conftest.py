"""Fixtures of the real-ComfyUI tests (marker ``comfy``): one ComfyUI imported into this pytest process for the
session, the tiny model files written once, and at most one server of the same tree, which starts in the background
while that import and those files are done (when a collected test needs it). Without a ComfyUI (``COMFYUI_PATH``,
or the ComfyUI holding this repository) that this interpreter can import, every test here skips and says why; the
modules import no ComfyUI at their top, so they collect anywhere.

Run: ``COMFYUI_PATH=/path/to/ComfyUI <its python> -m pytest -m comfy`` (scripts/run_tests.py does this per tree).
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
import torch
from comfy_session import STARTED, THREADS, ServerThread, import_comfy, session_comfy, summary
from session_runner import session_runner
from workflow_latents import cases, controlnet_examples, latent_prompt

from scripts import tiny_weights
from scripts.comfy_checkout import find_comfy

DIT = "PixArt-Sigma-XL-2-1024-MS.pth"  # the DiT most examples load
T5 = "t5xxl_fp16.safetensors"


def pytest_terminal_summary(terminalreporter):
    if STARTED["imported"]:
        terminalreporter.write_line(summary())


@pytest.fixture(scope="session")
def _session_comfy(tmp_path_factory):
    """The ComfyUI of ``$COMFYUI_PATH`` with the session's base directory (comfy_session.Comfy), nothing imported
    yet, else a skip saying why."""
    root, why = find_comfy()
    if root is None:
        pytest.skip(why)
    return session_comfy(root, tmp_path_factory.mktemp("comfy-base"))


@pytest.fixture(scope="session")
def _server_thread(_session_comfy, request):
    """The session's server starting in the background (comfy_session.ServerThread) when any collected test uses the
    ``server`` fixture, else None."""
    if not any("server" in item.fixturenames for item in request.session.items):
        yield None
        return
    thread = ServerThread(_session_comfy)
    yield thread
    thread.stop()


@pytest.fixture(scope="session", autouse=True)
def comfyui(_session_comfy, _server_thread):
    """The session's ComfyUI imported into this process (while its server, if any, starts), else a skip saying
    why."""
    try:
        import_comfy(_session_comfy)
    except ImportError as e:
        pytest.skip(
            f"{sys.executable} cannot import ComfyUI {_session_comfy.root} ({e}): run the comfy tests with the "
            "tree's interpreter (python scripts/run_tests.py does)"
        )
    torch.set_num_threads(THREADS)
    logging.getLogger().setLevel(logging.INFO)
    return _session_comfy


@pytest.fixture(scope="session", autouse=True)
def _models_first(comfyui, request):
    """The session's models, written before the first test when a collected test uses them (every server test
    does), so the server's start overlaps the import and them."""
    if any("models" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("models")


@pytest.fixture(autouse=True)
def _fresh_comfy_state(comfyui):
    """Each test starts with no interrupt pending and no model loaded (what a fresh process had)."""
    import comfy.model_management as mm

    yield
    mm.interrupt_current_processing(False)
    mm.unload_all_models()
    mm.soft_empty_cache()


@pytest.fixture(scope="session")
def models(comfyui, tmp_path_factory):
    """The session's models folder: tiny stand-ins of every file the example and 0.1 workflows and the interop
    prompt load (and the control image of the ControlNet example, in the input folder); the DiT most examples load
    lies outside models/ and is symlinked in (as users keep large files); plus a file that is no PixArt DiT and a T5
    narrower than the DiT's caption channels. The session's server may still be starting while they are written:
    ComfyUI reads its model folders when a prompt or a node list asks."""
    from workflow_runs import interop_prompt

    folder = comfyui.models
    tiny_weights.write_tiny_models(folder, [latent_prompt(s, n) for s, n in cases()] + [interop_prompt()])
    # the ControlNet examples' other files (ControlNet, control image) for the model lists; the DiT stays 1 block
    tiny_weights.write_tiny_models(folder, list(controlnet_examples().values()))
    outside = tmp_path_factory.mktemp("outside-models")
    os.replace(folder / "diffusion_models" / DIT, outside / DIT)
    (folder / "diffusion_models" / DIT).symlink_to(outside / DIT)
    tiny_weights.write(folder / "diffusion_models" / "not_a_pixart.safetensors", tiny_weights.vae_state_dict(0.13))
    tiny_weights.write(folder / "text_encoders" / "t5_narrow.safetensors", tiny_weights.t5_state_dict(d_model=64))
    return folder


@pytest.fixture(scope="session")
def server(_server_thread, models):
    """The session's one ComfyUI server (same tree, interpreter and base directory), once it answers."""
    return _server_thread.server()


@pytest.fixture
def runner(server, monkeypatch, caplog):
    """scripts/run_workflow.py's main on the session's server: run(*argv) -> (exit code, its log)."""
    return session_runner(server, monkeypatch, caplog)
