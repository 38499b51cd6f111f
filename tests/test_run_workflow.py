"""scripts/run_workflow.py's choices without a ComfyUI: the interpreter (each candidate must import the checkout's
essential requirements; a decoy ``venv/`` beside the checkout that cannot is skipped with the reason; with none, the
runner stops and lists what it tried), the GPU answer behind ``--cpu``, the output names (never overwriting), and the
progress lines built from ComfyUI's websocket messages."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
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
        [sys.executable, str(REPO / "scripts" / "run_workflow.py"), str(workflow), "--comfy", str(comfy), "--no-build"],
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
        assert run_workflow.main([str(workflow), "--out", str(tmp_path / "out"), "--no-build"]) == 2
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"using {comfy}" in messages
    assert f"no interpreter can run ComfyUI at {comfy}" in messages
    assert "python scripts/comfy_env.py" in messages


# --- issue 20: hostile and careless inputs to the runner ---------------------------------------------------------

RUNNER = REPO / "scripts" / "run_workflow.py"
EXAMPLE = REPO / "example_workflows" / "api" / "pixart_sigma_1024.json"
MAX_MESSAGE = 1000


def runner(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(RUNNER), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"1": {"class_type": ', "not JSON"),
        ('{"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "\u00e9"}}}'.encode("cp1252"), "not UTF-8"),
        (b"[1, 2]", "not an API-format workflow"),
        (b"{}", "not an API-format workflow"),
        (b'{"nodes": [], "links": []}', "no API twin"),
    ],
)
def test_a_broken_workflow_file_is_named_without_a_traceback(tmp_path, content, expected):
    workflow = tmp_path / "broken.json"
    workflow.write_bytes(content)
    run = runner(workflow, "--tiny", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert expected in run.stderr and str(workflow) in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr) < MAX_MESSAGE
    assert files_under(tmp_path) == {workflow}


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_a_workflow_that_is_not_a_file_is_named(tmp_path, kind):
    workflow = tmp_path / "absent.json"
    if kind == "folder":
        workflow.mkdir()
    run = runner(workflow, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert str(workflow) in run.stderr and "Traceback" not in run.stderr and len(run.stderr) < MAX_MESSAGE


@pytest.mark.parametrize("how", ["--comfy", "COMFYUI_PATH"])
@pytest.mark.parametrize("what", ["absent", "not-comfy"])
def test_a_named_folder_that_is_not_comfyui_is_an_error_never_replaced(tmp_path, how, what):
    folder = tmp_path / what
    if what == "not-comfy":
        (folder / "comfy").mkdir(parents=True)  # no main.py
    args, env = ([EXAMPLE, "--comfy", folder], {}) if how == "--comfy" else ([EXAMPLE], {"COMFYUI_PATH": str(folder)})
    run = runner(*args, "--tiny", cwd=tmp_path, env=env)
    assert run.returncode == 2, run.stderr
    assert f"{how}={folder} is not a ComfyUI checkout" in run.stderr
    assert ("no such folder" if what == "absent" else "no main.py") in run.stderr
    assert "ComfyUI 0." not in run.stderr and "using" not in run.stderr and "Traceback" not in run.stderr


def dit_prompt(name) -> dict:
    return {"4": {"class_type": "PixArtSigmaDiTLoader", "inputs": {"ckpt_name": name, "variant": "auto"}}}


@pytest.mark.parametrize(
    "name",
    ["../escaped.pth", "a/../../escaped.pth", "..\\escaped.pth", "ABSOLUTE", "link/escaped.pth", "", 7, None],
)
def test_tiny_stand_ins_stay_inside_the_models_folder(tmp_path, name):
    from pixart.errors import PixArtError
    from scripts import tiny_weights

    models, outside = tmp_path / "models", tmp_path / "outside"
    (models / "diffusion_models").mkdir(parents=True)
    outside.mkdir()
    (models / "diffusion_models" / "link").symlink_to(outside, target_is_directory=True)
    name = str(outside / "escaped.pth") if name == "ABSOLUTE" else name
    before = files_under(tmp_path)
    vae = {"7": {"class_type": "VAELoader", "inputs": {"vae_name": "ok.safetensors"}}}  # checked first, not written
    with pytest.raises(PixArtError) as refused:
        tiny_weights.write_tiny_models(models, [{**vae, **dit_prompt(name)}])
    message = str(refused.value)
    assert "node 4 PixArtSigmaDiTLoader, ckpt_name" in message and len(message) < MAX_MESSAGE
    if name in ("", None, 7):
        assert f"expected a model file name, found {name!r}" in message
    else:
        assert repr(name)[:30] in message and "is not a name inside" in message
    assert files_under(tmp_path) == before


def test_tiny_stand_ins_may_go_in_a_sub_folder(tmp_path):
    from scripts import tiny_weights

    prompt = {"7": {"class_type": "VAELoader", "inputs": {"vae_name": "sub/tiny_vae.safetensors"}}}
    assert tiny_weights.write_tiny_models(tmp_path, [prompt]) == [tmp_path / "vae" / "sub" / "tiny_vae.safetensors"]


def test_the_runner_reports_a_refused_name_without_a_traceback(tmp_path):
    from scripts import run_workflow

    models = tmp_path / "base" / "models"
    models.mkdir(parents=True)
    with pytest.raises(run_workflow.RunnerError) as refused:
        run_workflow.write_tiny_models(sys.executable, {}, models, dit_prompt("../../escaped.pth"))
    message = str(refused.value)
    assert message.startswith("node 4 PixArtSigmaDiTLoader, ckpt_name: '../../escaped.pth' is not a name inside")
    assert "Traceback" not in message and not (tmp_path / "escaped.pth").exists()


def test_tiny_shrinks_sizes_and_steps_and_says_so():
    from scripts.run_workflow import TINY_SIDE, TINY_STEPS, shrink_for_tiny

    prompt = {
        "5": {
            "class_type": "PixArtSigmaResolution",
            "inputs": {"base": "4096", "aspect_ratio": "1.0 square", "width": 1024, "height": 1024},
        },
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 2048, "height": 1152, "batch_size": 1}},
        "9": {"class_type": "KSamplerAdvanced", "inputs": {"steps": 20, "start_at_step": 10, "end_at_step": 10000}},
        "10": {"class_type": "KSampler", "inputs": {"steps": 2}},
    }
    notes = shrink_for_tiny(prompt)
    assert prompt["5"]["inputs"] == {
        "base": str(TINY_SIDE),
        "aspect_ratio": "1.0 square",
        "width": 1024,
        "height": 1024,
    }
    assert (prompt["6"]["inputs"]["width"], prompt["6"]["inputs"]["height"]) == (TINY_SIDE, 144)
    assert prompt["9"]["inputs"] == {"steps": TINY_STEPS, "start_at_step": 2, "end_at_step": 10000}
    assert prompt["10"]["inputs"] == {"steps": 2}
    assert notes == [
        f"node 5 PixArtSigmaResolution: base 4096 -> {TINY_SIDE}",
        f"node 6 EmptyLatentImage: width 2048 -> {TINY_SIDE}, height 1152 -> 144",
        f"node 9 KSamplerAdvanced: steps 20 -> {TINY_STEPS}, start_at_step 10 -> 2",
    ]


FAKE_SERVER = r"""
import json, os, sys, http.server
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
state = os.environ["FAKE_STATE"]
open(os.path.join(state, "server.pid"), "w").write(str(os.getpid()))
REFUSAL = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                     "details": ""},
           "node_errors": {"4": {"class_type": "PixArtSigmaDiTLoader", "dependent_outputs": ["9"], "errors": [
               {"type": "value_not_in_list", "message": "Value not in list",
                "details": "ckpt_name: 'PixArt-Sigma-XL-2-1024-MS.pth' not in " + repr([f"m{i}" for i in range(500)]),
                "extra_info": {"input_name": "ckpt_name", "received_value": "PixArt-Sigma-XL-2-1024-MS.pth"}}]}}}

class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.answer(404, {}) if self.path.startswith("/ws") else self.answer(200, {})
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if os.environ.get("FAKE_REFUSE"):
            return self.answer(400, REFUSAL)
        open(os.path.join(state, "queued"), "w").close()
        self.answer(200, {"prompt_id": "p1", "number": 0, "node_errors": {}})  # never finishes: /history stays {}
    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(args["--port"])), Handler).serve_forever()
"""


def fake_server_run(tmp_path: Path, **env) -> tuple[subprocess.Popen, Path, Path]:
    """The runner on a fake ComfyUI (a small HTTP server: no ComfyUI, no torch in it): (runner, state folder, out)."""
    comfy = fake_checkout(tmp_path, "")
    (comfy / "main.py").write_text(FAKE_SERVER)
    state, out, models, temp = (tmp_path / name for name in ("state", "out", "models", "tmp"))
    for folder in (state, models, temp):
        folder.mkdir()
    cmd = [sys.executable, str(RUNNER), str(EXAMPLE), "--comfy", str(comfy), "--python", sys.executable]
    cmd += ["--models", str(models), "--out", str(out), "--no-build"]
    env = {**os.environ, "FAKE_STATE": str(state), "TMPDIR": str(temp), **env}
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True), state, out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent that does not reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_runner_killed_outright_leaves_no_server_running(tmp_path, signum):
    run, state, out = fake_server_run(tmp_path)
    pid_file = state / "server.pid"
    try:
        assert wait_for(lambda: (state / "queued").exists() or run.poll() is not None), "the prompt was never queued"
        assert run.poll() is None, run.stderr.read()
        server = int(pid_file.read_text())
        assert alive(server)
        run.send_signal(signum)
        stderr = run.communicate(timeout=120)[1]
        assert wait_for(lambda: not alive(server), 60), f"ComfyUI (pid {server}) outlived its runner"
    finally:
        for pid in [run.pid, *([int(pid_file.read_text())] if pid_file.exists() else [])]:
            if alive(pid):  # a failed check must not leave either running
                os.kill(pid, signal.SIGKILL)
    if signum == signal.SIGKILL:
        assert run.returncode == -signal.SIGKILL
        return
    assert run.returncode == 128 + signum, stderr
    assert f"failed: Stopped\n{signum.name}" in stderr and "Traceback" not in stderr
    assert len(list(out.glob("comfyui-*.log"))) == 1
    assert not list((tmp_path / "tmp").iterdir())  # the runner's base folder (tiny models, log) is gone too


def test_missing_model_files_are_listed_with_their_folder_and_tiny(tmp_path):
    run, state, out = fake_server_run(tmp_path, FAKE_REFUSE="1")
    stderr = run.communicate(timeout=300)[1]
    assert run.returncode == 1, stderr
    models = tmp_path / "models"
    expected = f"node 4 PixArtSigmaDiTLoader, ckpt_name: 'PixArt-Sigma-XL-2-1024-MS.pth' -> put it in {models}"
    assert f"model files not found in {models}:" in stderr and expected + f"{os.sep}diffusion_models" in stderr
    assert "add --tiny" in stderr
    assert "m499" not in stderr and len(stderr.splitlines()) < 30 and "Traceback" not in stderr
    assert not alive(int((state / "server.pid").read_text()))
