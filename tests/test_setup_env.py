"""The set-up of the two commands (scripts/comfy_env.py, scripts/run_tests.py) without building anything: a complete
venv is reused after reading its marker alone (no pip call), an incomplete or outdated one is (re)built with the
pinned torch and the project's requirements, and a COMFYUI_PATH naming no ComfyUI stops the tests instead of being
replaced by other trees."""

from __future__ import annotations

import json
import sys

import pytest

from scripts import comfy_env, run_tests
from scripts.comfy_tree import REPO


def fake_venv(venv) -> None:
    comfy_env.venv_python(venv).parent.mkdir(parents=True, exist_ok=True)
    comfy_env.venv_python(venv).touch()


@pytest.fixture
def pip_calls(monkeypatch) -> list[tuple[str, ...]]:
    """Record pip calls instead of making them; a new venv is an empty file where its python goes."""
    calls = []
    monkeypatch.setattr(comfy_env, "_pip", lambda python, *args, isolated=False: calls.append(args))
    monkeypatch.setattr(comfy_env, "_new_venv", fake_venv)
    return calls


def test_a_complete_test_venv_is_reused_without_pip(tmp_path, pip_calls):
    python = comfy_env.venv_python(tmp_path)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (tmp_path / comfy_env.TEST_MARKER).write_text(json.dumps({"digest": comfy_env.suite_digest()}))
    assert comfy_env.build_suite_venv(tmp_path) == python
    assert pip_calls == []


def test_an_outdated_test_venv_is_rebuilt_with_the_pinned_torch(tmp_path, pip_calls):
    python = comfy_env.venv_python(tmp_path)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (tmp_path / comfy_env.TEST_MARKER).write_text(json.dumps({"digest": "requirements-dev.txt changed since"}))
    assert comfy_env.build_suite_venv(tmp_path) == python
    assert pip_calls == [(comfy_env.TEST_TORCH, "-r", str(REPO / "requirements-dev.txt"))]
    assert json.loads((tmp_path / comfy_env.TEST_MARKER).read_text())["digest"] == comfy_env.suite_digest()


def test_the_comfyui_venv_holds_pytest_and_the_pack_requirements(tmp_path, pip_calls):
    tree = REPO.parent / "shared" / "comfyui" / "0.33.0"
    if not (tree / "requirements.txt").is_file():
        pytest.skip(f"no ComfyUI tree at {tree}")
    comfy_env.build([tree], tmp_path / "venv")
    wanted = json.loads((tmp_path / "venv" / comfy_env.MARKER).read_text())["requirements"]
    assert {"pytest>=8", "psutil", "torchsde", "transformers>=4.40", "protobuf"} <= set(wanted)
    assert pip_calls[0] == tuple(comfy_env.TORCH)
    calls = len(pip_calls)
    comfy_env.build([tree], tmp_path / "venv")  # complete now: reused after reading the marker
    assert len(pip_calls) == calls


@pytest.mark.parametrize("what", ["absent", "not-comfy"])
def test_a_comfyui_path_that_is_not_comfyui_stops_the_tests(tmp_path, monkeypatch, what):
    folder = tmp_path / what
    if what == "not-comfy":
        folder.mkdir()
    monkeypatch.setenv("COMFYUI_PATH", str(folder))
    with pytest.raises(run_tests.SetupFailed, match=f"COMFYUI_PATH={folder} is not a ComfyUI checkout"):
        run_tests.comfy_trees()


def test_suites_run_at_the_same_time_each_log_printed_whole(tmp_path, capfd, monkeypatch):
    """steps_together starts every step before any ends (each waits for a file the other writes, so run one after the
    other the first would give up), prints each step's log as one block, shares the cores through OMP_NUM_THREADS
    and reports (name, exit code, seconds) in the order given, pytest's "no tests collected" (5) counting as 0."""
    monkeypatch.setattr(run_tests.os, "cpu_count", lambda: 4)
    waits = (
        "import os, pathlib, sys, time; here, other = map(pathlib.Path, sys.argv[1:3]); here.touch(); "
        "end = time.monotonic() + 60\n"
        "while not other.exists() and time.monotonic() < end: time.sleep(0.05)\n"
        "print('threads', os.environ['OMP_NUM_THREADS'], 'saw', other.name if other.exists() else None); "
        "print('second line'); sys.exit(int(sys.argv[3]))"
    )
    a, b = tmp_path / "a", tmp_path / "b"
    steps = [
        ("first", [sys.executable, "-c", waits, str(a), str(b), "5"], {}),
        ("second", [sys.executable, "-c", waits, str(b), str(a), "3"], {"EXTRA": "x"}),
    ]
    results = run_tests.steps_together(steps)
    assert [(name, code) for name, code, _ in results] == [("first", 0), ("second", 3)]
    out = capfd.readouterr().out
    assert "started: second: EXTRA=x " in out
    for name, other in (("first", "b"), ("second", "a")):
        block = out.split(f"=== {name} (")[1]
        assert f"threads 2 saw {other}\nsecond line\n" in block, out
