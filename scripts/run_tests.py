"""The project's one test command (CI runs exactly this): lint, the plain suite, then the ``comfy``-marked tests
against each real ComfyUI found.

    python scripts/run_tests.py [extra pytest arguments]

1. ``ruff check .`` and ``ruff format --check .`` (ruff of this interpreter)
2. ``python -m pytest -m "not comfy"``: the plain suite (no ComfyUI needed)
3. ``python -m pytest -m comfy`` once per ComfyUI tree, with ``COMFYUI_PATH`` and ``COMFYUI_PYTHON`` set: the tree in
   ``$COMFYUI_PATH``, else the ComfyUI this repository sits in, else every tree in ``../shared/comfyui/``. Each tree's
   interpreter is chosen as scripts/run_workflow.py chooses it (the test venv of scripts/comfy_env.py among the
   candidates). Where no tree is found the comfy tests still run once and skip, saying why; where a tree is found but
   no interpreter can run it, that is a failure (build one: ``python scripts/comfy_env.py``).

Exits non-zero when any step fails; pytest's "no tests collected" (exit 5) is not a failure. Prints a summary with
each step's time.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import comfy_env
from scripts.comfy_checkout import NoInterpreter, choose_interpreter, find_comfy
from scripts.comfy_tree import REPO, comfy_version

NO_TESTS = 5  # pytest's exit code when nothing was collected


def comfy_trees() -> tuple[list[Path], str]:
    """The trees to test against, and where they came from (or why there are none)."""
    comfy, why = find_comfy()
    if comfy is not None:
        return [comfy], "COMFYUI_PATH" if os.environ.get("COMFYUI_PATH") else "the ComfyUI holding this repository"
    if os.environ.get("COMFYUI_PATH"):
        return [], why
    trees = comfy_env.shared_trees()
    where = REPO.parent / "shared" / "comfyui"
    return (trees, str(where)) if trees else ([], f"{why}; and no trees in {where}")


def step(name: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, int, float]:
    print(f"\n=== {name}: {shlex.join(cmd)}", flush=True)
    start = time.monotonic()
    code = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}).returncode
    return name, 0 if code == NO_TESTS else code, time.monotonic() - start


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    pytest = [sys.executable, "-m", "pytest", *argv]
    results = [
        step("ruff check", [sys.executable, "-m", "ruff", "check", "."]),
        step("ruff format", [sys.executable, "-m", "ruff", "format", "--check", "."]),
        step("plain suite", [*pytest, "-m", "not comfy"]),
    ]
    trees, where = comfy_trees()
    if not trees:
        print(f"\nno ComfyUI to test against ({where}): the comfy tests skip", flush=True)
        results.append(step("comfy tests (none found)", [*pytest, "-m", "comfy"], {"COMFYUI_PATH": ""}))
    for tree in trees:
        name = f"comfy tests, ComfyUI {comfy_version(tree)} ({where})"
        try:
            interpreter = choose_interpreter(tree)
        except NoInterpreter as e:
            print(f"\n=== {name}: cannot run\n{e}\n(build the test venv: python scripts/comfy_env.py)", flush=True)
            results.append((name, 1, 0.0))
            continue
        print(f"\n{name}: interpreter {interpreter.describe()}", flush=True)
        env = {"COMFYUI_PATH": str(tree), "COMFYUI_PYTHON": interpreter.python, **interpreter.env}
        results.append(step(name, [*pytest, "-m", "comfy"], env))
    print("\n=== summary", flush=True)
    for name, code, seconds in results:
        print(f"{'ok  ' if code == 0 else 'FAIL'} {seconds:7.0f} s  {name}" + (f" (exit {code})" if code else ""))
    return 1 if any(code for _, code, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
