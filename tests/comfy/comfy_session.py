"""One ComfyUI per test session: imported into the pytest process (CPU, a temporary base directory, the pack loaded
by ComfyUI's own custom-node loader), and at most one server of the same tree started for the HTTP-level checks.

pytest runs under the tree's interpreter (scripts/run_tests.py: ``<its python> -m pytest -m comfy`` with
``COMFYUI_PATH``); tests/comfy/conftest.py holds the fixtures. ``STARTED`` counts the ComfyUI processes the session
starts besides itself (the conftest prints them at the end).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from scripts.comfy_server import PACK_NAME, ComfyServer, ServerFailed
from scripts.comfy_tree import REPO, comfy_version

STARTED = {"imported": 0, "servers": 0}
# torch threads in the tests and in the server: $OMP_NUM_THREADS (scripts/run_tests.py shares the cores), else 2
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 2)


@dataclass(frozen=True)
class Comfy:
    """The session's ComfyUI: its tree, its version, the base directory it reads and writes (models, output,
    custom_nodes, which links to this repository) and the package name under which its loader imports the pack
    (``import_comfy`` imports it into this process)."""

    root: Path
    version: str
    base: Path
    package: str

    @property
    def models(self) -> Path:
        return self.base / "models"

    def module(self, name: str):
        """A module of the pack as ComfyUI imported it, e.g. ``module("nodes.sampler")``."""
        return importlib.import_module(f"{self.package}.{name}")

    def tokenizer(self) -> Path:
        """The T5 tokenizer ComfyUI bundles."""
        return self.root / "comfy" / "text_encoders" / "t5_tokenizer"


def session_comfy(root: Path, base: Path) -> Comfy:
    """The ComfyUI at ``root`` with ``base`` as base directory, whose ``custom_nodes/<pack>`` is made here: a link to
    this repository (the server and this process then load the same pack from there)."""
    link = base / "custom_nodes" / PACK_NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(REPO, target_is_directory=True)
    return Comfy(root, comfy_version(root), base, str(link).replace(".", "_x_"))


def import_comfy(session: Comfy) -> None:
    """Import ComfyUI from ``session.root`` as ``main.py`` would, without its argument parser: CPU, ``session.base`` as
    base directory, the built-in extra nodes (comfy_extras) registered, then the pack loaded from
    ``base/custom_nodes/<pack>`` by ``nodes.load_custom_node``. Raises ImportError when this interpreter cannot."""
    sys.path.insert(0, str(session.root))  # before the repository: ``nodes`` is ComfyUI's nodes.py here
    import comfy.cli_args

    args = comfy.cli_args.args
    args.cpu, args.base_directory = True, str(session.base)
    import folder_paths

    import nodes

    assert Path(folder_paths.base_path) == session.base, (folder_paths.base_path, session.base)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    link = session.base / "custom_nodes" / PACK_NAME
    if not asyncio.run(nodes.load_custom_node(str(link))):
        raise RuntimeError(f"ComfyUI's loader did not load {link} (its log says why)")
    STARTED["imported"] = 1


# Test-only sitecustomize for the server: CPU ``torch.empty`` of 1 MiB or more returns zeroed memory (calloc'd
# through numpy, so untouched pages stay shared zero pages). ComfyUI builds a full T5-XXL for CLIPLoader(type pixart)
# and leaves the weights a file lacks uninitialised; the small T5-XXL stand-in of scripts/tiny_weights.py relies on
# those reading as zeros, which plain ``torch.empty`` does not promise (reused memory may hold NaNs).
ZEROED_EMPTY = """
import math

import numpy as np
import torch

_empty = torch.empty
torch.set_num_threads({threads})


def _zeroed_empty(*size, dtype=None, device=None, **kwargs):
    shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
    dtype = dtype or torch.get_default_dtype()
    # named: with torch.empty replaced, a ``with torch.device("meta")`` block no longer reaches the original
    device = torch.get_default_device() if device is None else torch.device(device)
    if kwargs or device.type != "cpu" or not all(isinstance(n, int) for n in shape):
        return _empty(*size, dtype=dtype, device=device, **kwargs)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < 1 << 20:
        return _empty(*size, dtype=dtype, device=device, **kwargs)
    return torch.from_numpy(np.zeros(nbytes, np.uint8)).view(dtype).view(shape)


torch.empty = _zeroed_empty
"""


# torch.compile in the server (TorchCompileModel): inductor trusts the CPU's base vector ISAs instead of proving each by
# building and loading a probe library in a fresh interpreter that imports torch (seconds per ISA, once per process).
INDUCTOR_ENV = {"TORCHINDUCTOR_VEC_ISA_OK": "1"}
# ComfyUI's own text encoders (CLIPLoader: the interop test's full T5-XXL) in fp32: on a CPU, 0.3.64 would keep them in
# fp16, whose matmuls are several times slower there (our T5 loader names its dtype and is not affected); no API nodes
# (comfy_api_nodes, for paid cloud services: a second off the start; the in-process import skips them too).
SERVER_ARGS = ["--preview-method", "latent2rgb", "--fp32-text-enc", "--disable-api-nodes"]


def start_server(comfy: Comfy) -> ComfyServer:
    """A started server of the same tree and interpreter on loopback (CPU), with the session's base directory (its
    models, and the pack in custom_nodes/), ZEROED_EMPTY loaded, INDUCTOR_ENV and SERVER_ARGS."""
    site = comfy.base / "test-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(ZEROED_EMPTY.format(threads=THREADS))
    paths = [str(site), os.environ.get("PYTHONPATH")]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, paths)), "OMP_NUM_THREADS": str(THREADS)}
    env.update(INDUCTOR_ENV)
    server = ComfyServer(comfy.root, comfy.base, sys.executable, cpu=True, extra_args=SERVER_ARGS, env=env)
    STARTED["servers"] += 1
    return server.start()


class ServerThread:
    """``start_server`` in a thread of its own, started at once, so the server comes up while this process does
    other work. The thread then holds the server until ``stop``: ComfyServer has its server killed when the thread
    that started it ends (``PR_SET_PDEATHSIG``), and with this process."""

    def __init__(self, comfy: Comfy):
        self._up, self._release = threading.Event(), threading.Event()
        self._server: ComfyServer | None = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._hold, args=(comfy,), name="comfyui-server", daemon=True)
        self._thread.start()

    def _hold(self, comfy: Comfy) -> None:
        try:
            self._server = start_server(comfy)
        except (ServerFailed, OSError) as e:  # raised again to the test that waits for the server
            self._error = e
        finally:
            self._up.set()
        if self._server is not None:
            self._release.wait()
            self._server.stop()

    def server(self) -> ComfyServer:
        """The started server, once it answers; what stopped it from starting is raised here."""
        self._up.wait()
        if self._error is not None:
            raise self._error
        if self._server is None:
            raise RuntimeError("the thread starting ComfyUI failed (its traceback is above)")
        return self._server

    def stop(self) -> None:
        self._release.set()
        self._thread.join()


def summary() -> str:
    """One line: the ComfyUI processes this session used."""
    total = STARTED["imported"] + STARTED["servers"]
    return f"ComfyUI processes: {total} (this pytest process {STARTED['imported']}, servers {STARTED['servers']})"
