"""The project's one test command (CI runs exactly this): it sets up what it runs in, then lints and tests.

    python scripts/run_tests.py [extra pytest arguments]

Set-up (timed on its own; once built, a run only reads the venvs' marker files; scripts/comfy_env.py builds them):
- the **test venv** (outside the clone: torch 2.13 and requirements-dev.txt) runs ruff and the plain suite; it is
  built on first use. ``PIXART_TEST_PYTHON=<python>`` runs them in that interpreter instead: it is checked, nothing is
  installed into it.
- the **ComfyUI trees**: ``$COMFYUI_PATH`` (an error when it names no ComfyUI), else the ComfyUI this repository sits
  in, else every tree in ``../shared/comfyui/``. Each runs in the **ComfyUI venv** (built or completed on first use:
  ComfyUI's requirements, pytest, psutil, requirements.txt), or in ``$COMFYUI_PYTHON`` when set (checked for all of
  those; nothing is installed into it).

Steps, each timed:
1. ``ruff check .`` and ``ruff format --check .``
2. at the same time, each into its own log that is printed whole when the step ends (``OMP_NUM_THREADS`` = the
   cores shared among them, at least 1):
   - ``<test venv python> -m pytest -m "not comfy"``: the plain suite (no ComfyUI needed)
   - per tree, ``<its interpreter> -m pytest -m comfy`` from the repository root with ``COMFYUI_PATH=<tree>`` and the
     tree's own ``PYTHONPATH`` entries (0.3.64's frontend pins): pytest itself runs inside ComfyUI's interpreter.
     With no tree the comfy tests run once in the test venv and skip, saying why.

Extra arguments go to every pytest run. Exits non-zero when any step fails; pytest's "no tests collected" (exit 5)
is not a failure.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import comfy_env
from scripts.comfy_checkout import NoInterpreter, choose_interpreter, find_comfy, probe
from scripts.comfy_tree import REPO, comfy_version, requirement_lines, requirement_name

log = logging.getLogger("run_tests")
NO_TESTS = 5  # pytest's exit code when nothing was collected
COMFY_TEST_NEEDS = ("pytest", "psutil", *(requirement_name(line) for line in requirement_lines(REPO)))


class SetupFailed(RuntimeError):
    """An environment named by the user cannot be used; the message names it and why."""


def comfy_trees() -> tuple[list[Path], str]:
    """The trees to test against and where they came from ([] and why when there are none). Raises SetupFailed when
    $COMFYUI_PATH names no ComfyUI: it is never replaced by another."""
    comfy, why = find_comfy()
    if comfy is not None:
        return [comfy], "COMFYUI_PATH" if os.environ.get("COMFYUI_PATH") else "the ComfyUI holding this repository"
    if os.environ.get("COMFYUI_PATH"):
        raise SetupFailed(why)
    trees = comfy_env.shared_trees()
    where = REPO.parent / "shared" / "comfyui"
    return (trees, str(where)) if trees else ([], f"{why}; and no trees in {where}")


def suite_python() -> str:
    """The interpreter for ruff and the plain suite: $PIXART_TEST_PYTHON (checked) or the test venv (built once)."""
    given = os.environ.get("PIXART_TEST_PYTHON")
    if not given:
        return str(comfy_env.build_suite_venv())
    names = [requirement_name(line) for line in requirement_lines(REPO, name="requirements-dev.txt")]
    facts, why = probe(given, [*names, *(requirement_name(line) for line in requirement_lines(REPO))])
    if facts is None:
        raise SetupFailed(f"PIXART_TEST_PYTHON={given} cannot run the tests: {why} (nothing is installed into it)")
    log.info(
        "ruff and the plain suite run in PIXART_TEST_PYTHON=%s (torch %s); nothing is installed into it",
        given,
        facts["torch"],
    )
    return given


def comfy_interpreter(tree: Path) -> tuple[str, dict[str, str]]:
    """(python, extra environment) of $COMFYUI_PYTHON for ``tree``, checked for ComfyUI's requirements and the tests'
    (pytest, psutil, requirements.txt)."""
    try:
        chosen = choose_interpreter(tree, also=COMFY_TEST_NEEDS)
    except NoInterpreter as e:
        raise SetupFailed(f"{e}\n(for the tests it needs pytest, psutil and requirements.txt too)") from e
    return chosen.python, chosen.env


def step(name: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, int, float]:
    """Run one step in the foreground: (name, exit code, seconds)."""
    print(f"\n=== {name}: {shlex.join(cmd)}", flush=True)
    start = time.monotonic()
    code = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}).returncode
    return name, 0 if code == NO_TESTS else code, time.monotonic() - start


def steps_together(steps: list[tuple[str, list[str], dict[str, str]]]) -> list[tuple[str, int, float]]:
    """Run ``steps`` [(name, command, extra environment)] at the same time, each writing to its own log in a
    temporary folder; print each log whole when its step ends. The cores are shared: each step gets
    ``OMP_NUM_THREADS`` = cores / steps (at least 1). Returns [(name, exit code, seconds)] in the order given."""
    threads = str(max(1, (os.cpu_count() or 1) // len(steps)))
    results, running = {}, {}
    with tempfile.TemporaryDirectory(prefix="pixart-test-logs-") as folder:
        try:
            for index, (name, cmd, env) in enumerate(steps):
                shown = [f"{key}={value}" for key, value in env.items()]
                print(f"=== started: {name}: {shlex.join([*shown, *cmd])}", flush=True)
                log = Path(folder) / f"{index}.log"
                with open(log, "wb") as out:
                    full_env = {**os.environ, "OMP_NUM_THREADS": threads, **env}
                    process = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
                running[index] = (process, log, time.monotonic())
            while running:
                time.sleep(0.2)
                for index in [i for i, (process, _, _) in running.items() if process.poll() is not None]:
                    process, log, started = running.pop(index)
                    seconds, name = time.monotonic() - started, steps[index][0]
                    print(f"\n=== {name} ({seconds:.0f} s, exit {process.returncode})", flush=True)
                    sys.stdout.buffer.write(log.read_bytes())
                    sys.stdout.flush()
                    results[index] = (name, 0 if process.returncode == NO_TESTS else process.returncode, seconds)
        finally:
            for process, _, _ in running.values():
                process.kill()
                process.wait()
    return [results[index] for index in range(len(steps))]


def setup() -> tuple[str, list[tuple[str, str, dict[str, str]]], list[str]]:
    """(suite python, [(step name, comfy python, env)], set-up errors), saying what it builds or reuses."""
    errors, runs = [], []
    python = suite_python()
    try:
        trees, where = comfy_trees()
    except SetupFailed as e:
        log.error("comfy tests: %s", e)
        return python, [], [f"comfy tests: {e}"]
    if not trees:
        log.info("no ComfyUI to test against (%s): the comfy tests skip", where)
        return python, [("comfy tests (no ComfyUI found)", python, {"COMFYUI_PATH": ""})], []
    venv = None if os.environ.get("COMFYUI_PYTHON") else str(comfy_env.build(trees))  # one build for all trees
    for tree in trees:
        name = f"comfy tests, ComfyUI {comfy_version(tree)} ({where})"
        try:
            comfy_python, env = (venv, comfy_env.tree_env(tree)) if venv else comfy_interpreter(tree)
        except SetupFailed as e:
            log.error("%s: %s", name, e)
            errors.append(f"{name}: {e}")
            continue
        runs.append((name, comfy_python, {"COMFYUI_PATH": str(tree), **env}))
    return python, runs, errors


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    start = time.monotonic()
    print("=== set-up: the environments the tests run in", flush=True)
    try:
        python, runs, errors = setup()
    except SetupFailed as e:
        print(f"set-up failed: {e}", flush=True)
        return 2
    setup_s = time.monotonic() - start
    print(f"set-up: {setup_s:.0f} s", flush=True)
    pytest = ["-m", "pytest", *argv]
    results = [
        step("ruff check", [python, "-m", "ruff", "check", "."]),
        step("ruff format", [python, "-m", "ruff", "format", "--check", "."]),
    ]
    print()
    suites = [("plain suite", [python, *pytest, "-m", "not comfy"], {})]
    suites += [(name, [comfy_python, *pytest, "-m", "comfy"], env) for name, comfy_python, env in runs]
    results += steps_together(suites)
    print("\n=== summary", flush=True)
    print(f"ok   {setup_s:7.0f} s  set-up (one time when building; a check afterwards)")
    for error in errors:
        print(f"FAIL       -    {error}")
    for name, code, seconds in results:
        print(f"{'ok  ' if code == 0 else 'FAIL'} {seconds:7.0f} s  {name}" + (f" (exit {code})" if code else ""))
    print(f"total: {time.monotonic() - start:.0f} s")
    return 1 if errors or any(code for _, code, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
