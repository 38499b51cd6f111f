"""The two environments the commands run in, each one venv outside the clone, built once and reused:

- the **ComfyUI venv** (``python scripts/comfy_env.py`` builds it alone; scripts/run_workflow.py and
  scripts/run_tests.py build it when they need it): runs every ComfyUI tree under ``../shared/comfyui`` (or the
  trees named with ``--comfy``) on CPU, and pytest inside ComfyUI for the ``comfy``-marked tests. Recipe
  (../shared/comfyui/README.md): PyPI's torch 2.11 with the torchvision/torchaudio built for it (the CPU torch of the
  test venv cannot load PyPI's torchvision), then the newest tree's requirements without the torch lines, torchsde,
  pytest, psutil and this pack's requirements.txt. A tree that pins other ``comfyui-*`` frontend/templates packages
  gets them in a folder of their own (``pip install --no-deps --target``), put first on its PYTHONPATH
  (``tree_env``). In ``$PIXART_COMFY_VENV``, else ``$XDG_CACHE_HOME/comfyui-pixart-sigma/comfy-venv``.
- the **test venv** (scripts/run_tests.py): the plain suite and ruff, on ``torch==2.13.0`` (pip's own choice of
  build: set ``PIP_EXTRA_INDEX_URL`` for a CPU-only one) and requirements-dev.txt. In ``$PIXART_TEST_VENV``, else
  ``$XDG_CACHE_HOME/comfyui-pixart-sigma/test-venv``.

A marker file written last says a build is complete (so an interrupted one is resumed, not trusted) and what it
holds; a complete build is reused after reading that file alone (no pip call). A lock beside each venv keeps two runs
from building it at once.

    python scripts/comfy_env.py                      # build the ComfyUI venv (or check it) and print its python
    python scripts/comfy_env.py --comfy ~/ComfyUI    # for another tree
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.comfy_tree import REPO, comfy_version, frontend_pins, requirement_lines, requirement_name, version_key

log = logging.getLogger("comfy_env")
TORCH = ["torch==2.11.0", "torchvision==0.26.0", "torchaudio==2.11.0"]
EXTRA = ["torchsde", "pytest>=8", "psutil"]  # plus this pack's requirements.txt
TEST_TORCH = "torch==2.13.0"
MARKER = "pixart-comfy-env.json"
TEST_MARKER = "pixart-test-env.json"


def _venv(variable: str, name: str) -> Path:
    """``$variable``, else ``$XDG_CACHE_HOME/comfyui-pixart-sigma/<name>`` (``~/.cache`` by default)."""
    if os.environ.get(variable):
        return Path(os.environ[variable]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "comfyui-pixart-sigma" / name


def venv_dir() -> Path:
    """The ComfyUI venv's folder."""
    return _venv("PIXART_COMFY_VENV", "comfy-venv")


def suite_venv_dir() -> Path:
    """The test venv's folder."""
    return _venv("PIXART_TEST_VENV", "test-venv")


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def shared_trees(repo: Path = REPO) -> list[Path]:
    """The ComfyUI trees in ``<repo>/../shared/comfyui/``, newest version first (none when that folder is absent)."""
    root = repo.parent / "shared" / "comfyui"
    trees = [p for p in root.iterdir() if (p / "main.py").is_file()] if root.is_dir() else []
    return sorted(trees, key=lambda p: version_key(comfy_version(p)), reverse=True)


def _pins_key(pins: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(pins)).encode()).hexdigest()[:12]


def base_requirements(trees: list[Path]) -> list[str]:
    """The newest tree's requirement lines without torch/torchvision/torchaudio, plus the lines of older trees whose
    distributions it does not name (their ``comfyui-*`` pins excepted)."""
    lines: dict[str, str] = {}
    for index, tree in enumerate(trees):
        for line in requirement_lines(tree):
            name = requirement_name(line)
            if name in ("torch", "torchvision", "torchaudio") or (index and name.startswith("comfyui-")):
                continue
            lines.setdefault(name, line)
    return list(lines.values())


def read_marker(venv: Path | None = None, name: str = MARKER) -> dict | None:
    path = (venv or venv_dir()) / name
    return json.loads(path.read_text()) if path.is_file() else None


def ready_python() -> str | None:
    """The venv's python when a build completed, else None."""
    venv = venv_dir()
    return str(venv_python(venv)) if read_marker(venv) is not None and venv_python(venv).is_file() else None


def tree_env(tree: Path) -> dict[str, str]:
    """Extra environment for running ``tree`` with the venv: its own ``comfyui-*`` folder first on PYTHONPATH when its
    pins differ from the venv's."""
    marker = read_marker() or {}
    site = marker.get("sites", {}).get(_pins_key(frontend_pins(tree)), "")
    if not site:
        return {}
    return {"PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))}


def _pip(python: Path, *args: str, isolated: bool = False) -> None:
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--isolated"] if isolated else []
    log.info("$ %s", " ".join([*cmd, *args]))
    done = subprocess.run([*cmd, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"pip failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")


@contextlib.contextmanager
def _exclusive(venv: Path):
    """Hold a lock beside the venv (POSIX), so two CI runs on one machine never build it at once."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as handle:
        if os.name == "posix":
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(trees: list[Path], venv: Path | None = None) -> Path:
    """Build (or complete) the ComfyUI venv for ``trees`` (newest first); returns its python. Reuses a finished build
    that already covers them."""
    venv = venv or venv_dir()
    with _exclusive(venv):
        return _build(trees, venv)


def _build(trees: list[Path], venv: Path) -> Path:
    python = venv_python(venv)
    wanted = list(dict.fromkeys(base_requirements(trees) + EXTRA + requirement_lines(REPO)))
    newest_pins = frontend_pins(trees[0])
    sites = {_pins_key(newest_pins): ""}
    for tree in trees[1:]:
        pins = frontend_pins(tree)
        sites.setdefault(_pins_key(pins), str(venv / "sites" / _pins_key(pins)))
    marker = read_marker(venv)
    if (
        marker
        and python.is_file()
        and set(wanted) <= set(marker["requirements"])
        and sites.items() <= marker["sites"].items()
    ):
        log.info("reusing %s (complete for %s)", venv, ", ".join(comfy_version(t) for t in trees))
        return python
    start = time.monotonic()
    if marker is None or not python.is_file():  # completing a finished build keeps its marker: what it lists stays
        (venv / MARKER).unlink(missing_ok=True)
        log.info(
            "building the ComfyUI venv in %s for ComfyUI %s: PyPI's torch 2.11, ComfyUI's requirements, pytest "
            "(one time: about 3-6 minutes and 6 GB of disk; later runs reuse it)",
            venv,
            ", ".join(comfy_version(t) for t in trees),
        )
        _new_venv(venv)
    else:
        log.info("completing the ComfyUI venv in %s for ComfyUI %s", venv, ", ".join(comfy_version(t) for t in trees))
    _pip(python, *TORCH, isolated=True)  # PyPI's builds, not a local CPU wheel that PyPI's torchvision cannot load
    _pip(python, *wanted, *TORCH)
    for tree in trees[1:]:
        site = sites[_pins_key(frontend_pins(tree))]
        if site:
            _pip(python, "--no-deps", "--upgrade", "--target", site, *frontend_pins(tree))
    (venv / MARKER).write_text(json.dumps({"requirements": wanted, "sites": sites}, indent=1))
    log.info("built %s in %.0f s", venv, time.monotonic() - start)
    return python


def _new_venv(venv: Path) -> None:
    if not venv_python(venv).is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)


def suite_digest() -> str:
    """A digest of what the test venv holds: its torch and the text of requirements-dev.txt and requirements.txt."""
    text = "\n".join([TEST_TORCH, *((REPO / n).read_text() for n in ("requirements-dev.txt", "requirements.txt"))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_suite_venv(venv: Path | None = None) -> Path:
    """Build the test venv (or reuse it when its marker matches ``suite_digest``); returns its python."""
    venv = venv or suite_venv_dir()
    python, digest = venv_python(venv), suite_digest()
    with _exclusive(venv):
        if python.is_file() and (read_marker(venv, TEST_MARKER) or {}).get("digest") == digest:
            log.info("reusing the test venv %s (complete for requirements-dev.txt)", venv)
            return python
        (venv / TEST_MARKER).unlink(missing_ok=True)
        log.info(
            "building the test venv in %s: %s and requirements-dev.txt (one time: about 2-4 minutes and 2 GB of "
            "disk; later runs reuse it)",
            venv,
            TEST_TORCH,
        )
        start = time.monotonic()
        _new_venv(venv)
        _pip(python, TEST_TORCH, "-r", str(REPO / "requirements-dev.txt"))
        (venv / TEST_MARKER).write_text(json.dumps({"digest": digest, "torch": TEST_TORCH}, indent=1))
        log.info("built %s in %.0f s", venv, time.monotonic() - start)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfy", type=Path, action="append", help="a ComfyUI tree (repeatable; default: ../shared)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    trees = sorted(args.comfy, key=lambda p: version_key(comfy_version(p)), reverse=True) if args.comfy else []
    trees = trees or shared_trees()
    if not trees:
        log.info("no ComfyUI trees in %s and no --comfy: nothing to build", REPO.parent / "shared" / "comfyui")
        return 0
    print(build([t.resolve() for t in trees]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
