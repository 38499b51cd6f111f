"""A ComfyUI server on loopback with its own base directory, for the headless runner, the benchmarks and the tests.

The server is ``main.py`` of a checkout, run by a given interpreter with ``--base-directory`` (it writes only there)
and an in-memory database; ``custom_nodes/`` of the base directory links to this repository. Its output goes to
``<base>/comfyui.log``. On Linux the server dies with the thread that started it, however that ends (``SIGKILL``
included: ``PR_SET_PDEATHSIG``), so a runner killed by a supervisor or a closed terminal leaves no server computing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from scripts.comfy_tree import REPO

log = logging.getLogger("comfy_server")
PACK_NAME = "comfyui-pixart-sigma"


class ServerFailed(RuntimeError):
    """ComfyUI exited, or did not answer, while starting or running; the message ends with the log's tail."""


class PromptRejected(RuntimeError):
    """ComfyUI refused the prompt (validation errors): ``answer`` is its JSON reply, the message one short line per
    error (``rejection_lines``)."""

    def __init__(self, answer: dict):
        self.answer = answer
        super().__init__("\n".join(rejection_lines(answer)))


class WorkflowFailed(RuntimeError):
    """A node raised while the prompt ran; the message is ComfyUI's."""


class ComfyServer:
    """A ComfyUI server on loopback with its own base directory; use as a context manager.

    ``python`` runs ``main.py`` (choose it with scripts.comfy_checkout.choose_interpreter); ``env`` is added to this
    process's environment; ``cpu`` passes ``--cpu``."""

    def __init__(self, comfy: Path, base: Path, python: str, cpu: bool = True, extra_args=(), env=None):
        self.comfy, self.base, self.python = Path(comfy).resolve(), Path(base), python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "comfyui.log"
        self.args = ["--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(self.base)]
        self.args += ["--database-url", "sqlite:///:memory:", *(["--cpu"] if cpu else []), *extra_args]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    def prepare(self, models: Path | None = None) -> None:
        """custom_nodes/<pack> -> this repo; models/ -> ``models`` when given (else a fresh folder)."""
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        if models is not None and not (self.base / "models").exists():
            (self.base / "models").symlink_to(Path(models).resolve(), target_is_directory=True)

    def start(self, timeout: float = 300) -> ComfyServer:
        self.prepare()
        cmd = [self.python, "main.py", *self.args]
        log.debug("starting %s", " ".join(cmd))
        with open(self.log_path, "w") as out:  # the child keeps its own handle
            self.process = subprocess.Popen(
                cmd,
                cwd=self.comfy,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.stop()
        raise ServerFailed(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s:\n{self.tail()}")

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

    def tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def import_failed(self) -> bool:
        """Whether ComfyUI reported this pack (or any custom node) as IMPORT FAILED."""
        return "IMPORT FAILED" in self.log()

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
        """Queue an API-format prompt for this server's client id (its progress goes to that websocket); raises
        PromptRejected with ComfyUI's validation errors."""
        answer = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if "prompt_id" not in answer:
            raise PromptRejected(answer)
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600, on_poll: Callable[[], None] | None = None) -> dict:
        """The /history entry of a finished prompt (``status.status_str`` is "success" or "error"); ``on_poll`` is
        called between polls (every 0.25 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process is not None and self.process.poll() is not None:
                raise ServerFailed(f"ComfyUI died while running {prompt_id}:\n{self.tail()}")
            if on_poll is not None:
                on_poll()
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 600, on_poll: Callable[[], None] | None = None) -> dict:
        """Queue, wait, and raise WorkflowFailed with ComfyUI's error message if the run failed."""
        entry = self.wait(self.queue(prompt), timeout, on_poll)
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


def rejection_lines(answer: dict, count: int = 20, width: int = 240) -> list[str]:
    """One line per validation error of ComfyUI's /prompt refusal (``node 6 PixArtSigmaSampler: Value smaller than
    min: steps ...``), each cut to ``width`` characters (a refused list value's details hold the whole list), at most
    ``count`` lines."""
    lines = []
    for node_id, entry in (answer.get("node_errors") or {}).items():
        for error in entry.get("errors", []) if isinstance(entry, dict) else []:
            lines.append(f"node {node_id} {entry.get('class_type')}: {error.get('message')}: {error.get('details')}")
    error = answer.get("error")
    if not lines:
        lines.append(f"{error.get('message')}: {error.get('details')}" if isinstance(error, dict) else str(answer))
    cut = [crop(line, width) for line in lines[:count]]
    return cut + ([f"... and {len(lines) - count} more"] if len(lines) > count else [])


def crop(text: object, width: int = 80) -> str:
    """``text`` as one line of at most ``width`` characters (the end replaced by `` ...``)."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 4] + " ..."


def die_with_parent():
    """A ``preexec_fn`` that has the child killed when the thread starting it ends (Linux ``PR_SET_PDEATHSIG``), or
    None where that does not exist. A parent already gone before the call kills the child at once."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


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
