"""scripts/run_workflow.py's ``main`` run in the test process with the session's server in place of the one it would
start (``SessionServer``): everything else (interpreter choice, tiny weights, queueing, progress over the websocket,
image and log files) is the runner's own; starting a server is what every other test of the session exercises.
The ``runner`` fixture (tests/comfy/conftest.py) hands it to the tests."""

from __future__ import annotations

import logging

from scripts import run_workflow


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


def session_runner(server, monkeypatch, caplog):
    """run_workflow.main(argv) -> (exit code, its log), on ``server``."""
    stand_in = SessionServer(server)
    monkeypatch.setattr(run_workflow, "ComfyServer", stand_in)
    caplog.set_level(logging.INFO)

    def run(*argv: str) -> tuple[int, str]:
        code = run_workflow.main(list(argv))
        assert stand_in.built_with, "the runner started no server"
        return code, caplog.text

    return run
