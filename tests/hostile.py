"""Helpers for the hostile-input tests: crafted files, the checks every refusal must pass, and an isolated runner
that bounds a case's memory (address-space limit) and time (timeout) so a regression fails instead of freezing."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixart import PixArtConfig, PixArtError, PixArtTransformer

REPO = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 600  # characters of a refusal
MEMORY_LIMIT = 4 * 2**30  # address space of an isolated case
UNSAFE_ADVICE = "weights_only=False"
HINTS = {"num_heads": 3}  # the tiny DiT is 96 wide: heads cannot be read off shapes


def tiny_dit_state() -> dict[str, torch.Tensor]:
    """Official-keyed weights of a 2-block, 96-wide PixArt transformer (random init, no diffusers needed)."""
    config = PixArtConfig(depth=2, hidden_size=96, num_heads=3, caption_channels=48, sample_size=16)
    torch.manual_seed(0)
    return {k: v.detach().clone().contiguous() for k, v in PixArtTransformer(config).state_dict().items()}


def raw_safetensors(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    """A safetensors file written byte by byte: ``length`` (default: the true one), the header, then ``data``."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def check_refusal(error: BaseException | dict, path: Path, kind: type[PixArtError] = PixArtError) -> str:
    """The refusal is ours (of ``kind``), names the file, is short, encodes in cp1252 and never advises unsafe
    loading; returns the message."""
    if isinstance(error, dict):  # from an isolated run
        assert error["error"] in {c.__name__ for c in (kind, *kind.__subclasses__())}, error
        message = error["message"]
    else:
        assert isinstance(error, kind), repr(error)
        message = str(error)
    assert path.name in message, message
    assert len(message) <= MAX_MESSAGE, (len(message), message)
    assert UNSAFE_ADVICE not in message and "pip install" not in message, message
    message.encode("cp1252")
    return message


def refusal(call, path: Path, kind: type[PixArtError] = PixArtError) -> str:
    """Run ``call``, expect a refusal of ``kind`` naming ``path``; returns its message."""
    with pytest.raises(PixArtError) as info:
        call()
    return check_refusal(info.value, path, kind)


_PREAMBLE = f"""
import json, logging, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
from pathlib import Path
import pixart
import pixart.lora
args = [Path(a) for a in sys.argv[1:]]
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
logging.getLogger("pixart").addHandler(handler)
def run(call):
    try:
        result = call()
    except pixart.PixArtError as e:
        print(json.dumps({{"error": type(e).__name__, "message": str(e), "logs": records}}))
    else:
        print(json.dumps({{"error": None, "result": repr(result)[:200], "logs": records}}))
"""


def isolated(statement: str, *args: Path, timeout: float = 180) -> dict:
    """Run ``run(lambda: <statement>)`` in a fresh interpreter limited to ``MEMORY_LIMIT`` bytes of address space and
    ``timeout`` seconds; ``args`` are ``args[0..]`` there. Returns ``{"error": class name or None, "message", "logs"}``.
    """
    code = _PREAMBLE + f"run(lambda: {statement})\n"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
