"""scripts/run_workflow.py's ``main`` run in the test process with the session's server in place of the one it would
start (``SessionServer``): everything else (interpreter choice, tiny weights, queueing, progress over the websocket,
image and log files) is the runner's own; starting a server is what every other test of the session exercises. An
interpreter's probe (a fresh process importing ComfyUI's requirements, seconds) runs once per session for the same
interpreter, requirements and environment (``remembered_probe``); the runner's choice among them runs every time.
The ``runner`` fixture (tests/comfy/conftest.py) hands it to the tests."""

from __future__ import annotations

import logging
import os

from scripts import comfy_checkout, run_workflow

PROBED: dict[tuple, tuple[dict | None, str]] = {}  # comfy_checkout.probe's answers in this session


class SessionServer:
    """Stands in for ``ComfyServer`` in scripts/run_workflow.py: built with the same arguments, it is the session's
    running server (same tree and interpreter), which it neither prepares, starts nor stops."""

    def __init__(self, shared):
        self.shared, self.built_with = shared, []

    def __call__(self, comfy, base, python, cpu=True, extra_args=(), env=None):
        self.built_with.append({"comfy": comfy, "python": python, "cpu": cpu})
        return self

    def prepare(self, models=None) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def stop(self) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self.shared, name)


def remembered_probe(probe):
    """``comfy_checkout.probe`` answering again what it answered for the same arguments and environment."""

    def remembered(python: str, requirements: list[str], env: dict[str, str] | None = None):
        environ = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest's, per test
        key = (python, tuple(requirements), tuple(sorted((env or {}).items())), tuple(sorted(environ.items())))
        if key not in PROBED:
            PROBED[key] = probe(python, requirements, env)
        return PROBED[key]

    return remembered


def session_runner(server, monkeypatch, caplog):
    """run_workflow.main(argv) -> (exit code, its log), on ``server``."""
    stand_in = SessionServer(server)
    monkeypatch.setattr(run_workflow, "ComfyServer", stand_in)
    monkeypatch.setattr(comfy_checkout, "probe", remembered_probe(comfy_checkout.probe))
    caplog.set_level(logging.INFO)

    def run(*argv: str) -> tuple[int, str]:
        code = run_workflow.main(list(argv))
        assert stand_in.built_with, "the runner started no server"
        return code, caplog.text

    return run
