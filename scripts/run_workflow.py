"""Run a workflow headless against a ComfyUI checkout and write out its images.

Starts ``main.py`` on loopback with a temporary base directory whose ``custom_nodes/`` links to this repository,
posts the API-format workflow to ``/prompt``, polls ``/history``, downloads the images and stops the server.

    python scripts/run_workflow.py example_workflows/pixart_sigma_1024.json --comfy ~/ComfyUI --cpu --tiny

A UI-format file (as the frontend saves it) runs through its API-format twin in ``api/`` beside it.
``--tiny`` first writes tiny random-weight stand-ins for every model file the workflow loads (scripts/tiny_weights.py):
the images are then noise, but every node runs. Without it, ``models/`` of the checkout (or ``--models``) is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

log = logging.getLogger("run_workflow")
REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui-pixart-sigma"


def find_python(comfy: Path) -> str:
    """The interpreter for a checkout: $COMFYUI_PYTHON, else a venv in or next to it, else this one."""
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for candidate in ("venv", ".venv", "../venv", "../.venv", "../python_embeded"):
        for exe in ("bin/python", "Scripts/python.exe", "python.exe"):
            if (comfy / candidate / exe).is_file():
                return str(comfy / candidate / exe)
    return sys.executable


def load_api_prompt(path: Path) -> dict:
    """The API-format prompt of ``path``; a UI-format file is replaced by ``api/<same name>`` beside it."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        twin = path.parent / "api" / path.name
        if not twin.is_file():
            raise SystemExit(f"{path} is in UI format and has no API twin at {twin}; export it with 'Export (API)'")
        data = json.loads(twin.read_text())
    if not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise SystemExit(f"{path}: not an API-format workflow (node id -> {{class_type, inputs}})")
    return data


class ComfyServer:
    """A ComfyUI server on loopback with its own base directory; use as a context manager."""

    def __init__(self, comfy: Path, base: Path, python: str | None = None, cpu: bool = True, extra_args=(), env=None):
        self.comfy, self.base = Path(comfy).resolve(), Path(base)
        self.python = python or find_python(self.comfy)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "comfyui.log"
        self.args = ["--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(self.base)]
        self.args += ["--database-url", "sqlite:///:memory:", *(["--cpu"] if cpu else []), *extra_args]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def prepare(self, models: Path | None = None) -> None:
        """custom_nodes/<pack> -> this repo; models/ -> ``models`` when given (else a fresh folder)."""
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        if models is not None and not (self.base / "models").exists():
            (self.base / "models").symlink_to(Path(models).resolve(), target_is_directory=True)

    def start(self, timeout: float = 180) -> ComfyServer:
        self.prepare()
        out = open(self.log_path, "w")  # noqa: SIM115 (closed with the process)
        cmd = [self.python, "main.py", *self.args]
        log.info("starting %s", " ".join(cmd))
        self.process = subprocess.Popen(
            cmd, cwd=self.comfy, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer on {self.url} within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            body = response.read()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, payload: dict, timeout: float = 30) -> dict:
        request = urllib.request.Request(
            self.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as e:  # ComfyUI answers a rejected prompt with 400 and a JSON reason
            body = e.read()
            if not body.startswith(b"{"):
                raise
        return json.loads(body) if body else {}

    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; raises with ComfyUI's validation errors when it is rejected."""
        answer = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if "prompt_id" not in answer:
            raise PromptRejected(json.dumps(answer, indent=1)[:4000])
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """The /history entry of a finished prompt (``status.status_str`` is "success" or "error")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-3000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue, wait, and raise WorkflowFailed with ComfyUI's error message if the run failed."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"]["status_str"] != "success":
            raise WorkflowFailed(error_message(entry))
        return entry

    def images(self, entry: dict) -> list[tuple[str, bytes]]:
        """(file name, bytes) of every image a finished prompt produced."""
        files = []
        for output in entry.get("outputs", {}).values():
            for image in output.get("images", []):
                query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
                files.append((image["filename"], self.get(f"/view?{query}")))
        return files


class PromptRejected(RuntimeError):
    """ComfyUI refused the prompt (validation errors)."""


class WorkflowFailed(RuntimeError):
    """A node raised while the prompt ran; the message is ComfyUI's."""


def error_message(entry: dict) -> str:
    """The exception message(s) in a /history entry's status messages."""
    found = []
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            found.append(f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message')}")
        elif kind == "execution_interrupted":
            found.append(f"interrupted at node {data.get('node_id')}")
    return "\n".join(found) or json.dumps(entry.get("status"))[:2000]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=Path, help="workflow .json (API format, or UI format with an api/ twin)")
    parser.add_argument("--comfy", type=Path, default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout")
    parser.add_argument("--python", help="interpreter for ComfyUI (default: $COMFYUI_PYTHON or a venv next to it)")
    parser.add_argument("--models", type=Path, help="models folder (default: the checkout's models/)")
    parser.add_argument("--tiny", action="store_true", help="write tiny random-weight models first (images are noise)")
    parser.add_argument("--cpu", action="store_true", help="pass --cpu to ComfyUI")
    parser.add_argument("--out", type=Path, default=Path("output"), help="folder for the images (default ./output)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.comfy is None or not (args.comfy / "main.py").is_file():
        parser.error("give --comfy (or COMFYUI_PATH): a ComfyUI checkout holding main.py")
    prompt = load_api_prompt(args.workflow)
    base = Path(tempfile.mkdtemp(prefix="pixart-comfy-"))
    try:
        server = ComfyServer(args.comfy, base, args.python, cpu=args.cpu)
        if args.tiny:
            sys.path.insert(0, str(Path(__file__).parent))
            from tiny_weights import write_tiny_models

            write_tiny_models(base / "models", [prompt])
            log.warning("--tiny: the models are random, so the images are noise")
        server.prepare(None if args.tiny else args.models or args.comfy / "models")
        with server:
            if "IMPORT FAILED" in server.log():
                log.error("%s", server.log()[-3000:])
                return 1
            entry = server.run(prompt, args.timeout)
            args.out.mkdir(parents=True, exist_ok=True)
            for name, data in server.images(entry):
                (args.out / name).write_bytes(data)
                log.info("wrote %s", args.out / name)
    except (PromptRejected, WorkflowFailed) as e:
        log.error("%s failed:\n%s\n(ComfyUI log: %s)", args.workflow, e, base / "comfyui.log")
        return 1
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
