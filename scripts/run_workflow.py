"""Run a workflow headless against a ComfyUI checkout and write out its images.

    python scripts/run_workflow.py example_workflows/pixart_sigma_1024.json --tiny

Finds ComfyUI by itself: ``--comfy``, ``$COMFYUI_PATH``, the ComfyUI whose ``custom_nodes/`` holds this
repository, else the newest tree in ``../shared/comfyui/`` beside it (as the tests find theirs). It picks an
interpreter that can import ComfyUI's requirements (``--python``, ``$COMFYUI_PYTHON``,
else a venv in or beside the checkout, else this one: each is checked and the one used is named) and passes
``--cpu`` when it sees no GPU. ComfyUI runs on loopback with a temporary base directory whose ``custom_nodes/``
links to this repository; its progress (node, step i/n, elapsed) is shown while it runs. Images go to ``--out``
and never replace a file there (a numeric suffix is added). When a run fails, ComfyUI's log is kept in ``--out``.

A UI-format file (as the frontend saves it) runs through its API-format twin in ``api/`` beside it. ``--tiny`` first
writes tiny random-weight stand-ins for every model file the workflow loads (scripts/tiny_weights.py, run by the
chosen interpreter): the images are then noise, but every node runs. Without it the checkout's ``models/`` (or
``--models``) is used. This script needs only the standard library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import comfy_env
from scripts.comfy_checkout import NoInterpreter, choose_interpreter, find_comfy
from scripts.comfy_progress import Progress, follow
from scripts.comfy_server import ComfyServer, PromptRejected, ServerFailed, WorkflowFailed
from scripts.comfy_tree import comfy_version

log = logging.getLogger("run_workflow")
SCRIPTS = Path(__file__).resolve().parent


def load_api_prompt(path: Path) -> dict:
    """The API-format prompt of ``path``; a UI-format file is replaced by ``api/<same name>`` beside it."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        twin = path.parent / "api" / path.name
        if not twin.is_file():
            raise SystemExit(f"{path} is in UI format and has no API twin at {twin}; export it with 'Export (API)'")
        data = json.loads(twin.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise SystemExit(f"{path}: not an API-format workflow (node id -> {{class_type, inputs}})")
    return data


def unique_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>-2<suffix>``, ``-3``, ... : the first that does not exist yet."""
    path = folder / name
    number = 2
    while path.exists():
        path = folder / f"{Path(name).stem}-{number}{Path(name).suffix}"
        number += 1
    return path


def write_tiny_models(python: str, env: dict[str, str], models: Path, prompt: dict) -> None:
    """Tiny random stand-ins for the prompt's model files, written by ``python`` (it has torch and safetensors)."""
    prompt_file = models.parent / "prompt.json"
    prompt_file.write_text(json.dumps(prompt))
    cmd = [python, str(SCRIPTS / "tiny_weights.py"), str(models), str(prompt_file)]
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"writing the tiny models failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")


def keep_log(server: ComfyServer, out: Path) -> Path:
    """Copy ComfyUI's log into ``out`` (never replacing a file) and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    kept = unique_path(out, f"comfyui-{time.strftime('%Y%m%d-%H%M%S')}.log")
    shutil.copyfile(server.log_path, kept)
    return kept


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=Path, help="workflow .json (API format, or UI format with an api/ twin)")
    parser.add_argument("--comfy", type=Path, help="ComfyUI checkout (default: $COMFYUI_PATH, else the one above)")
    parser.add_argument("--python", help="ComfyUI's interpreter (default: $COMFYUI_PYTHON, else the first that works)")
    parser.add_argument("--models", type=Path, help="models folder (default: the checkout's models/)")
    parser.add_argument("--tiny", action="store_true", help="write tiny random-weight models first (images are noise)")
    parser.add_argument("--cpu", action="store_true", help="pass --cpu to ComfyUI even when a GPU is seen")
    parser.add_argument("--out", type=Path, default=Path("output"), help="folder for the images (default ./output)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    comfy, why = find_comfy(args.comfy)
    shared = comfy_env.shared_trees() if comfy is None else []  # ComfyUI trees in ../shared/comfyui, newest first
    if shared:
        comfy = shared[0]
        log.info("no ComfyUI named or around this repository: using %s", comfy)
    if comfy is None:
        log.error("%s", why)
        return 2
    prompt = load_api_prompt(args.workflow)
    try:
        interpreter = choose_interpreter(comfy, args.python)
    except NoInterpreter as e:
        log.error("%s", e)
        return 2
    cpu = args.cpu or not interpreter.gpu
    log.info("ComfyUI %s at %s", comfy_version(comfy), comfy)
    log.info("interpreter: %s", interpreter.describe())
    base = Path(tempfile.mkdtemp(prefix="pixart-comfy-"))
    server = ComfyServer(comfy, base, interpreter.python, cpu=cpu, env=interpreter.env)
    started = time.monotonic()
    try:
        if args.tiny:
            write_tiny_models(interpreter.python, interpreter.env, base / "models", prompt)
            log.warning("--tiny: the models are random, so the images are noise")
        server.prepare(None if args.tiny else args.models or comfy / "models")
        log.info("starting ComfyUI%s (log: %s)", " with --cpu" if cpu else "", server.log_path)
        with server:
            log.info("ComfyUI is up after %.0f s", time.monotonic() - started)
            if server.import_failed():
                raise ServerFailed(f"a custom node failed to import:\n{server.tail()}")
            progress = Progress(prompt)
            ws = follow("127.0.0.1", server.port, server.client_id, progress)
            try:
                entry = server.run(prompt, args.timeout, on_poll=progress.tick)
            finally:
                if ws is not None:
                    ws.close()
            args.out.mkdir(parents=True, exist_ok=True)
            for name, data in server.images(entry):
                path = unique_path(args.out, name)
                path.write_bytes(data)
                log.info("wrote %s", path)
        log.info("done in %.0f s", time.monotonic() - started)
    except (PromptRejected, WorkflowFailed, ServerFailed, TimeoutError, KeyboardInterrupt) as e:
        server.stop()
        kept = keep_log(server, args.out) if server.log_path.exists() else None
        log.error("%s failed: %s\n%s", args.workflow, type(e).__name__, e)
        log.error("ComfyUI's log: %s", kept or "(ComfyUI did not start)")
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
