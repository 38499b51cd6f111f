"""Finding a ComfyUI checkout and an interpreter that can run it.

A checkout is ``--comfy``, else ``$COMFYUI_PATH``, else the ComfyUI this repository sits in
(``ComfyUI/custom_nodes/<this repo>``). An interpreter is used only after it has imported the essential part of the
checkout's ``requirements.txt`` (everything above its "non essential" comment) and torch has told it whether it sees a
GPU; every candidate that fails is reported with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scripts import comfy_env
from scripts.comfy_tree import REPO, essential_requirements

log = logging.getLogger("comfy_checkout")
PROBE_TIMEOUT_S = 300

# Runs inside the candidate interpreter: argv[1] is a JSON list of distribution names. Prints one JSON line; exits 3
# when distributions are missing, and with the import's own traceback when one is installed but cannot be imported.
PROBE = r"""
import importlib, importlib.metadata as md, json, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
modules = {}
for module, dists in getattr(md, "packages_distributions", dict)().items():
    for dist in dists:
        modules.setdefault(norm(dist), []).append(module)
wanted = json.loads(sys.argv[1])
installed = {norm(d.metadata["Name"] or "") for d in md.distributions()}
missing = [name for name in wanted if norm(name) not in installed]
if missing:
    print(json.dumps({"missing": missing}))
    sys.exit(3)
for name in ["torch", *wanted]:
    found = [m for m in modules.get(norm(name), []) if not m.startswith("_")]
    own = norm(name).replace("-", "_")
    for module in [own] if own in found else found or [own]:
        importlib.import_module(module)
import torch
gpu = ""
if torch.cuda.is_available() and torch.cuda.device_count():
    gpu = "cuda " + torch.cuda.get_device_name(0)
elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
    gpu = "mps"
elif getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
    gpu = "xpu"
print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "gpu": gpu}))
"""


class NoInterpreter(RuntimeError):
    """No candidate interpreter can import the checkout's requirements; the message lists each and why (``tried``:
    one line per candidate)."""

    def __init__(self, message: str, tried: list[str]):
        super().__init__(message)
        self.tried = tried


@dataclass
class Interpreter:
    """A checked interpreter: where it came from, its torch build and the GPU it sees ("" = none: run with --cpu)."""

    python: str
    origin: str
    torch: str = ""
    gpu: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        device = self.gpu or "no GPU -> --cpu"
        path = f"; PYTHONPATH={self.env['PYTHONPATH']}" if self.env.get("PYTHONPATH") else ""
        return f"{self.python} ({self.origin}; torch {self.torch}, {device}{path})"


def find_comfy(explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """(checkout, "") or (None, why none was found): ``explicit``, else $COMFYUI_PATH, else the ComfyUI whose
    ``custom_nodes/`` holds this repository."""
    for given, source in ((explicit, "--comfy"), (os.environ.get("COMFYUI_PATH"), "COMFYUI_PATH")):
        if given:
            path = Path(given).expanduser().resolve()
            if (path / "main.py").is_file() and (path / "comfy").is_dir():
                return path, ""
            found = "no such folder" if not path.exists() else "it holds no main.py and comfy/"
            return None, f"{source}={given} is not a ComfyUI checkout ({found})"
    parent = REPO.parent
    if parent.name == "custom_nodes" and (parent.parent / "main.py").is_file():
        return parent.parent, ""
    return (
        None,
        "no ComfyUI found: set COMFYUI_PATH (or --comfy) to a checkout, or clone this repo into ComfyUI/custom_nodes/",
    )


def probe(python: str, requirements: list[str], env: dict[str, str] | None = None) -> tuple[dict | None, str]:
    """(facts, "") when ``python`` imports every requirement (facts: python and torch versions, the GPU it sees), else
    (None, why not)."""
    if not Path(shutil.which(python) or python).is_file():
        return None, "no such file"
    try:
        done = subprocess.run(
            [python, "-c", PROBE, json.dumps(requirements)],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        return None, f"importing the requirements took over {PROBE_TIMEOUT_S} s"
    except OSError as e:
        return None, f"cannot run it: {e}"
    lines = done.stdout.strip().splitlines()
    answer = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if done.returncode == 0 and "torch" in answer:
        return answer, ""
    if "missing" in answer:
        return None, f"not installed: {', '.join(answer['missing'])}"
    errors = [line for line in done.stderr.strip().splitlines() if line and not line.startswith(" ")]
    return None, errors[-1] if errors else f"exited with {done.returncode}"


def candidates(comfy: Path) -> list[tuple[str, str, dict[str, str]]]:
    """(python, where it came from, extra environment) in the order tried when none is given: a venv in or beside the
    checkout, the Windows portable build's, the pack's ComfyUI venv (scripts/comfy_env.py), then this interpreter."""
    found = []
    for folder in ("venv", ".venv", "../venv", "../.venv", "../python_embeded"):
        for exe in ("bin/python", "Scripts/python.exe", "python.exe"):
            if (comfy / folder / exe).is_file():
                found.append((os.path.normpath(comfy / folder / exe), f"{folder}/ of the checkout", {}))
    comfy_venv = comfy_env.ready_python()
    if comfy_venv is not None:
        found.append((comfy_venv, "the pack's ComfyUI venv, scripts/comfy_env.py", comfy_env.tree_env(comfy)))
    found.append((sys.executable, "the interpreter running this script", {}))
    return found


def choose_interpreter(
    comfy: Path,
    explicit: str | None = None,
    env: dict[str, str] | None = None,
    also: tuple[str, ...] = (),
    origin: str = "--python",
) -> Interpreter:
    """The first interpreter that can run the checkout (and import the distributions ``also`` names): ``explicit``
    (described as ``origin``) or $COMFYUI_PYTHON alone when given, else the first of ``candidates``. Raises
    NoInterpreter listing every one tried and why it was skipped."""
    requirements = essential_requirements(comfy) + list(also)
    given = explicit or os.environ.get("COMFYUI_PYTHON")
    origin = origin if explicit else "COMFYUI_PYTHON"
    if given:
        tried = [(given, origin, comfy_env.tree_env(comfy) if given == comfy_env.ready_python() else {})]
    else:
        tried = candidates(comfy)
    reasons, seen = [], set()
    for python, where, extra in tried:
        if python in seen:
            continue
        seen.add(python)
        extra = {**extra, **(env or {})}
        facts, why = probe(python, requirements, extra)
        if facts is not None:
            for reason in reasons:
                log.info("skipped %s", reason.strip())
            return Interpreter(python, where, facts["torch"], facts["gpu"], dict(extra))
        reasons.append(f"  {python} ({where}): {why}")
    raise NoInterpreter(
        f"no interpreter can run ComfyUI at {comfy}; tried:\n"
        + "\n".join(reasons)
        + f"\nInstall ComfyUI's requirements into one (pip install -r {comfy / 'requirements.txt'}) and pass it with"
        " --python or COMFYUI_PYTHON, or build the pack's ComfyUI venv: python scripts/comfy_env.py",
        reasons,
    )
