"""Calling ComfyUI nodes and reading their results in the session's ComfyUI, for the in-process tests."""

from __future__ import annotations

import logging


def call(cls, **inputs) -> tuple:
    """A stock node run as ComfyUI runs it: V3 (``execute``) or V1 (``FUNCTION``)."""
    if hasattr(cls, "define_schema"):
        return outputs(cls.execute(**inputs))
    return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def outputs(output) -> tuple:
    """The outputs of a node's result (a V3 ``NodeOutput`` or a V1 tuple)."""
    return tuple(output.result) if hasattr(output, "result") else tuple(output)


def node_result(output):
    """The first output of a node's result (a MODEL, a CONDITIONING...)."""
    return outputs(output)[0]


def relative(got, want) -> float:
    """max |got - want| / max |want|."""
    return ((got - want).abs().max() / want.abs().max()).item()


def assert_close(got, want, what: str, tol: float = 1e-5) -> None:
    err = relative(got, want)
    print(f"{what}: max relative difference {err:.2e}")
    assert err <= tol, f"{what}: max relative difference {err:.2e} > {tol:.0e}"


class Collect(logging.Handler):
    """Keeps the messages of every log record at INFO or above (EasyCache and the cache node report in the log)."""

    def __init__(self, records: list[str]):
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def add_model_folder(monkeypatch, kind: str, folder) -> None:
    """``folder`` as the first ``kind`` folder of ComfyUI's folder_paths for one test (undone by ``monkeypatch``, file
    lists included)."""
    import copy

    import folder_paths

    paths = folder_paths.folder_names_and_paths
    monkeypatch.setitem(paths, kind, copy.deepcopy(paths[kind]))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    folder_paths.add_model_folder_path(kind, str(folder), is_default=True)
