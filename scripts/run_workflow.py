"""Run a workflow headless against a ComfyUI checkout and write out its images.

    python scripts/run_workflow.py example_workflows/pixart_sigma_1024.json --tiny

Finds ComfyUI by itself: ``--comfy``, ``$COMFYUI_PATH`` (either one naming no ComfyUI is an error, never replaced by
another), the ComfyUI whose ``custom_nodes/`` holds this repository, else the newest tree in ``../shared/comfyui/``
beside it (as the tests find theirs). It picks an interpreter that can import ComfyUI's requirements (``--python``,
``$COMFYUI_PYTHON``, else a venv in or beside the checkout, the pack's ComfyUI venv, this one: each is checked and
the one used is named); when none can, it builds the pack's ComfyUI venv (scripts/comfy_env.py, once; ``--no-build``
stops instead). It passes ``--cpu`` when that interpreter sees no GPU. ComfyUI runs on loopback with a temporary base
directory whose ``custom_nodes/`` links to this repository, and dies with this script (scripts/comfy_server.py); its
progress (node, step i/n, elapsed) is shown while it runs. Images go to ``--out`` and never replace a file there (a
numeric suffix is added). When a run fails, ComfyUI's log is kept in ``--out``.

A UI-format file (as the frontend saves it) runs through its API-format twin in ``api/`` beside it. ``--tiny`` first
writes tiny random-weight stand-ins for every model file the workflow loads (scripts/tiny_weights.py, run by the
chosen interpreter) and runs at most TINY_SIDE px and TINY_STEPS steps (``--keep-size`` keeps the workflow's): the
images are then noise, but every node runs. Without it the checkout's ``models/`` (or ``--models``) is used, and
model files missing there are listed with the folder each goes in. This script needs only the standard library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import comfy_env
from scripts.comfy_checkout import Interpreter, NoInterpreter, choose_interpreter, find_comfy
from scripts.comfy_progress import Progress, follow
from scripts.comfy_server import ComfyServer, PromptRejected, ServerFailed, WorkflowFailed, crop
from scripts.comfy_tree import comfy_version
from scripts.model_files import model_files

log = logging.getLogger("run_workflow")
SCRIPTS = Path(__file__).resolve().parent
TINY_SIDE = 256  # --tiny: the largest image side
TINY_STEPS = 4  # --tiny: the most sampling steps
RESIZE_MULTIPLE = 16  # sizes shrunk by --tiny stay multiples of this (8 px latent x patch 2)


class RunnerError(Exception):
    """A workflow file, checkout or setting this runner cannot use (exit 2); the message names it."""


class Stopped(Exception):
    """This runner got SIGTERM or SIGHUP (a supervisor's timeout, a closed terminal)."""


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as e:
        raise RunnerError(f"{what} {path}: no such file") from e
    except OSError as e:
        raise RunnerError(f"{what} {path}: cannot read it ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise RunnerError(f"{what} {path}: not UTF-8 text (byte {e.start}: {crop(e.reason)})") from e
    except json.JSONDecodeError as e:
        raise RunnerError(f"{what} {path}: not JSON ({crop(e.msg)} at line {e.lineno}, column {e.colno})") from e


def load_api_prompt(path: Path) -> dict:
    """The API-format prompt of ``path``; a UI-format file is replaced by ``api/<same name>`` beside it."""
    data = _read_json(path, "workflow")
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        twin = path.parent / "api" / path.name
        if not twin.is_file():
            raise RunnerError(f"{path} is in UI format and has no API twin at {twin}; export it with 'Export (API)'")
        path, data = twin, _read_json(twin, "API twin")
    nodes = data.values() if isinstance(data, dict) else []
    if not nodes or not all(isinstance(v, dict) and "class_type" in v for v in nodes):
        raise RunnerError(f"{path}: not an API-format workflow (node id -> {{class_type, inputs}})")
    return data


def shrink_for_tiny(prompt: dict) -> list[str]:
    """Cap the prompt's image sizes at TINY_SIDE px (PixArtSigmaResolution's ``base``; any node's ``width`` and
    ``height``, aspect kept) and its sampling steps at TINY_STEPS (``start_at_step``/``end_at_step`` scaled along), in
    place; returns one line per changed node."""
    notes = []
    for node_id, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        changes = {}
        base = inputs.get("base")
        resolution = node["class_type"] == "PixArtSigmaResolution" and isinstance(base, str) and base.isdigit()
        if resolution and int(base) > TINY_SIDE:
            changes["base"] = str(TINY_SIDE)
        width, height = inputs.get("width"), inputs.get("height")
        if resolution and not str(inputs.get("aspect_ratio")).startswith("custom"):
            width = height = None  # the node ignores them: its size comes from base and aspect_ratio
        if isinstance(width, int) and isinstance(height, int) and max(width, height) > TINY_SIDE:
            scale = TINY_SIDE / max(width, height)
            for key, side in (("width", width), ("height", height)):
                changes[key] = max(RESIZE_MULTIPLE, round(side * scale / RESIZE_MULTIPLE) * RESIZE_MULTIPLE)
        steps = inputs.get("steps")
        if isinstance(steps, int) and steps > TINY_STEPS:
            changes["steps"] = TINY_STEPS
            for key in ("start_at_step", "end_at_step"):
                if isinstance(inputs.get(key), int) and inputs[key] <= steps:
                    changes[key] = round(inputs[key] * TINY_STEPS / steps)
        changes = {key: value for key, value in changes.items() if value != inputs[key]}
        if changes:
            notes.append(
                f"node {node_id} {node['class_type']}: "
                + ", ".join(f"{key} {inputs[key]} -> {value}" for key, value in changes.items())
            )
            inputs.update(changes)
    return notes


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
    if done.returncode == 2:  # a name tiny_weights refuses: its message names the node and the name
        raise RunnerError(done.stderr.strip().removeprefix("tiny_weights: "))
    if done.returncode:
        raise RunnerError(f"writing the tiny models failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")


def missing_models(prompt: dict, rejected: PromptRejected, models: Path) -> list[str]:
    """One line per model file ComfyUI refused as not in its list (``node 4 PixArtSigmaDiTLoader, ckpt_name: 'x.pth'
    -> put it in models/diffusion_models/``)."""
    errors = rejected.answer.get("node_errors") or {}
    lines = []
    for file in model_files(prompt):
        refused = errors.get(file.node_id, {}).get("errors", []) if isinstance(errors, dict) else []
        if any(
            e.get("type") == "value_not_in_list" and (e.get("extra_info") or {}).get("input_name") == file.input_name
            for e in refused
        ):
            lines.append(f"  {file.where()}: {crop(repr(file.name))} -> put it in {models / file.folder}{os.sep}")
    return lines


def explain_rejection(args: argparse.Namespace, prompt: dict, e: PromptRejected, models: Path) -> str:
    """What to tell the user about a refused prompt: the missing model files first (where each goes, and --tiny),
    then ComfyUI's other complaints, one short line each."""
    missing = missing_models(prompt, e, models)
    if not missing:
        return str(e)
    other = [line for line in str(e).splitlines() if "Value not in list" not in line]
    tiny = "" if args.tiny else ", or add --tiny to run on tiny random-weight stand-ins (the images are then noise)"
    return "\n".join(
        [
            f"model files not found in {models}:",
            *missing,
            f"Put them there (README: 'Where the weights go'), point --models at a folder that holds them{tiny}.",
            *other,
        ]
    )


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
    parser.add_argument("--keep-size", action="store_true", help=f"with --tiny: keep sizes over {TINY_SIDE} px, steps")
    parser.add_argument("--no-build", action="store_true", help="never build the pack's ComfyUI venv; stop instead")
    parser.add_argument("--cpu", action="store_true", help="pass --cpu to ComfyUI even when a GPU is seen")
    parser.add_argument("--out", type=Path, default=Path("output"), help="folder for the images (default ./output)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    return parser.parse_args(argv)


def find_checkout(args: argparse.Namespace) -> Path:
    """The ComfyUI to run; ``--comfy`` or $COMFYUI_PATH naming no ComfyUI is an error, never replaced by another."""
    comfy, why = find_comfy(args.comfy)
    if comfy is not None:
        return comfy
    if args.comfy or os.environ.get("COMFYUI_PATH"):
        raise RunnerError(why)
    shared = comfy_env.shared_trees()  # ComfyUI trees in ../shared/comfyui, newest first
    if not shared:
        raise RunnerError(why)
    log.info("no ComfyUI named or around this repository: using %s", shared[0])
    return shared[0]


def find_interpreter(args: argparse.Namespace, comfy: Path) -> Interpreter:
    """The interpreter that runs ``comfy``; when none can and none was named, the pack's ComfyUI venv, built once."""
    try:
        return choose_interpreter(comfy, args.python)
    except NoInterpreter as e:
        if args.python or os.environ.get("COMFYUI_PYTHON") or args.no_build:
            raise RunnerError(str(e)) from e
        log.info("no interpreter here can run ComfyUI at %s:\n%s", comfy, "\n".join(e.tried))
    python = comfy_env.build([comfy])
    try:
        return choose_interpreter(comfy, str(python), origin="the pack's ComfyUI venv")
    except NoInterpreter as e:
        raise RunnerError(str(e)) from e


def _stop(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def exit_code(e: BaseException) -> int:
    """128 + the signal's number for a run stopped by a signal (Ctrl-C: 130), else 1."""
    if isinstance(e, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return 128 + signal.Signals[str(e)].value if isinstance(e, Stopped) else 1


def run(args: argparse.Namespace, comfy: Path, interpreter: Interpreter, prompt: dict) -> int:
    """Start ComfyUI, run ``prompt``, write its images; 0 on success, 1 when ComfyUI refused or failed it."""
    cpu = args.cpu or not interpreter.gpu
    base = Path(tempfile.mkdtemp(prefix="pixart-comfy-"))
    server = ComfyServer(comfy, base, interpreter.python, cpu=cpu, env=interpreter.env)
    models = base / "models" if args.tiny else (args.models or comfy / "models")
    started = time.monotonic()
    try:
        if args.tiny:
            write_tiny_models(interpreter.python, interpreter.env, models, prompt)
            log.warning("--tiny: the models are random, so the images are noise")
        server.prepare(None if args.tiny else models)
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
        return 0
    except (PromptRejected, WorkflowFailed, ServerFailed, TimeoutError, KeyboardInterrupt, Stopped) as e:
        server.stop()
        kept = keep_log(server, args.out) if server.log_path.exists() else None
        why = explain_rejection(args, prompt, e, models) if isinstance(e, PromptRejected) else str(e)
        log.error("%s failed: %s\n%s", args.workflow, type(e).__name__, why)
        log.error("ComfyUI's log: %s", kept or "(ComfyUI did not start)")
        return exit_code(e)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("SIGTERM", "SIGHUP"):  # a supervisor's timeout, a closed terminal: stop ComfyUI, then exit
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _stop)
    try:
        prompt = load_api_prompt(args.workflow)
        comfy = find_checkout(args)
        interpreter = find_interpreter(args, comfy)
    except RunnerError as e:
        log.error("%s", e)
        return 2
    except (Stopped, KeyboardInterrupt) as e:
        log.error("stopped (%s) before ComfyUI started", type(e).__name__)
        return exit_code(e)
    log.info("ComfyUI %s at %s", comfy_version(comfy), comfy)
    log.info("interpreter: %s", interpreter.describe())
    if args.tiny and not args.keep_size:
        for note in shrink_for_tiny(prompt):
            log.warning("--tiny: %s (--keep-size keeps the workflow's sizes and steps)", note)
    try:
        return run(args, comfy, interpreter, prompt)
    except RunnerError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
