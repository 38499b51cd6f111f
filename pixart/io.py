"""The one set of file readers the DiT, T5 and LoRA loaders share: weights, safetensors headers, JSON, shard indexes.

Every reader takes the caller's error class (``CheckpointError``, ``T5Error`` or ``LoraError``) and raises it naming
the file, what was expected and what was found. Pickles load with ``weights_only=True`` only; a refused pickle is
reported by the global it asked for, never with torch's advice to load it unsafely.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import stat
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .errors import PixArtError, short

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
MAX_JSON_BYTES = 64 * 2**20  # config, index and tokenizer JSON files are kilobytes to a few megabytes
MAX_TENSORS = 100_000  # tensors in one weights file (T5-XXL with its decoder: ~500; a PixArt DiT: ~700)
MAX_SHARDS = 10_000  # distinct shard files one index may list
MAX_KEY = 1024  # characters of one tensor name (the longest real ones are about 100)
_ZIP_SLACK = 64 * 2**20  # a torch zip may unpack to at most 4x its size plus this (torch stores entries uncompressed)
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]{1,200})")

ErrorKind = type[PixArtError]


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def entry_kind(path: Path) -> str:
    """What the listed ``path`` is, links followed but never renamed: "file" (regular), "folder", "missing", or a
    description of anything else ("a FIFO (named pipe)", "a dangling link to ...", "unreadable (...)")."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a dangling link to {short(os.readlink(path), 120)}"
        return "missing"
    except OSError as e:  # a link loop, a permission error, a name too long
        return f"unreadable ({short(e.strerror or e, 80)})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return next((name for test, name in _SPECIAL if test(mode)), f"of unknown type (mode {mode:o})")


def check_entry(path: Path, error: ErrorKind, allowed: tuple[str, ...] = ("file",), what: str = "file") -> str:
    """``entry_kind(path)`` when it is one of ``allowed`` ("file", "folder"); otherwise ``error`` naming the listed
    path and saying what it is instead (a FIFO, a device, a dangling link: never "not found" for those). Callers
    pass the path the user picked, never its resolved target, so messages and formats follow the listed name."""
    kind = entry_kind(path)
    if kind in allowed:
        return kind
    if kind == "missing":
        raise error(f"{path}: no such {what}")
    target = f" (links to {short(os.path.realpath(path), 120)})" if os.path.islink(path) else ""
    article = "a folder" if kind == "folder" else "a regular file" if kind == "file" else kind
    raise error(f"{path}: expected a {what}, found {article}{target}")


def weights_format(path: Path) -> str | None:
    """ "safetensors" or "torch" from the suffix of the listed name (a Hugging Face cache link
    ``snapshots/<rev>/x.safetensors -> ../../blobs/<hash>`` is a safetensors file); None for other suffixes."""
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    return None


@dataclass(frozen=True)
class TensorHeader:
    """One tensor's safetensors header entry (no data read)."""

    file: Path  # the file that holds it
    dtype: str  # safetensors dtype name: "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", ...
    shape: tuple[int, ...]


def _check_names(path: Path, keys: list, error: ErrorKind) -> None:
    """Refuse more tensors than any supported model has, or names far longer than any real one."""
    if len(keys) > MAX_TENSORS:
        raise error(f"{path}: holds {len(keys)} tensors, more than the {MAX_TENSORS} any supported model has")
    long = next((k for k in keys if isinstance(k, str) and len(k) > MAX_KEY), None)
    if long is not None:
        raise error(f"{path}: names a tensor with {len(long)} characters ({short(long, 60)!r}); expected <= {MAX_KEY}")


def read_safetensors(path: Path, error: ErrorKind) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a ``.safetensors``/``.sft`` file (on CPU) and its header metadata (``{}`` when none)."""
    check_entry(path, error)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            _check_names(path, keys, error)
            return {key: f.get_tensor(key) for key in keys}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise error(f"{path}: not a readable safetensors file (truncated or corrupt?): {short(e, 200)}") from e


def read_safetensors_headers(files: list[Path], error: ErrorKind) -> dict[str, TensorHeader]:
    """Header entries of safetensors files: stored key -> dtype and shape; no tensor data is read."""
    tensors: dict[str, TensorHeader] = {}
    for file in files:
        check_entry(file, error)
        try:
            with safe_open(str(file), framework="pt") as f:
                keys = list(f.keys())
                _check_names(file, keys, error)
                for key in keys:
                    entry = f.get_slice(key)
                    tensors[key] = TensorHeader(file, entry.get_dtype(), tuple(entry.get_shape()))
        except (SafetensorError, OSError) as e:
            raise error(
                f"{file}: not a readable safetensors file (truncated, corrupt or another format): {short(e, 200)}"
            ) from e
    return tensors


def _is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle (first byte 0x80)."""
    with open(path, "rb") as f:
        first = f.read(1)
    return first == b"\x80" or zipfile.is_zipfile(path)


def _check_zip_size(path: Path, error: ErrorKind) -> None:
    """Refuse a zip whose entries unpack to far more than the file holds (a zip bomb)."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > 4 * path.stat().st_size + _ZIP_SLACK:
        raise error(f"{path}: its zip entries unpack to {unpacked} bytes from a {path.stat().st_size}-byte file")


def _refusal(e: BaseException) -> str:
    """Why torch could not load a file, without torch's advice to retry unsafely."""
    text = str(e)
    refused = _REFUSED_GLOBAL.search(text)
    if refused:
        return (
            f"it holds a pickled object ({short(refused.group(1), 60)}), not only tensors; "
            "only plain weights are loaded, since pickled objects can run code"
        )
    if "weights_only" in text or "Weights only" in text:
        return "it holds pickled objects other than tensors; only plain weights are loaded, since they can run code"
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"truncated or corrupt ({type(e).__name__}: {short(first_line, 120)})"


def read_torch(path: Path, error: ErrorKind, wrappers: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.bin``/``.ckpt`` file, loaded with ``weights_only=True`` on CPU.

    Args:
        wrappers: keys of an outer dict that may hold the state dict, most preferred first (e.g. ``state_dict_ema``);
            the first one present is used.
    Returns:
        {name: tensor}; every value of the (unwrapped) dict must be a tensor.
    """
    check_entry(path, error)
    try:
        if not _is_torch_file(path):
            raise error(f"{path}: not a readable PyTorch checkpoint (neither a torch zip archive nor a pickle)")
        _check_zip_size(path, error)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        KeyError,
        ValueError,
        TypeError,
        IndexError,
        AttributeError,
        struct.error,
    ) as e:
        if isinstance(e, PixArtError):
            raise
        raise error(f"{path}: not a readable PyTorch checkpoint: {_refusal(e)}") from e
    for key in wrappers:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            if key != "state_dict":
                log.info("%s: using the %r weights", path, key)
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a flat dict of tensors, found {type(obj).__name__}")
    _check_names(path, list(obj), error)
    others = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if others:
        found = ", ".join(f"{short(k, 60)!r}: {type(obj[k]).__name__}" for k in others[:3])
        raise error(f"{path}: expected a flat dict of tensors, found {len(others)} other entries ({found})")
    if not obj:
        raise error(f"{path}: holds no tensors")
    return obj


def read_weights(path: Path, error: ErrorKind, wrappers: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """The tensors of a safetensors or torch file, chosen by the listed name's suffix (:func:`weights_format`)."""
    kind = weights_format(path)
    if kind == "safetensors":
        return read_safetensors(path, error)[0]
    if kind == "torch":
        return read_torch(path, error, wrappers)
    raise error(
        f"{path}: unsupported file type {short(path.suffix, 20)!r}; expected one of "
        f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}"
    )


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str | bytes, source: str, error: ErrorKind, constants: bool = False) -> dict:
    """A JSON object from text (a file's, or a header entry's); other top-level types refused, and NaN/Infinity
    unless ``constants`` (diffusers writes ``-Infinity`` into scheduler configs; :func:`json_field` still refuses a
    non-finite value for any field read)."""
    if len(text) > MAX_JSON_BYTES:
        raise error(f"{source}: {len(text)} bytes of JSON, more than the {MAX_JSON_BYTES} a config may have")
    try:
        data = json.loads(text, parse_constant=None if constants else _no_constants)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{source}: not valid JSON: {short(e, 160)}") from e
    if not isinstance(data, dict):
        raise error(f"{source}: expected a JSON object, found {type(data).__name__}")
    return data


def read_json(path: Path, error: ErrorKind, constants: bool = False) -> dict:
    """A JSON object from a file (``config.json``, an index, ``adapter_config.json``); ``constants`` as in
    :func:`parse_json`."""
    check_entry(path, error)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{path}: {size} bytes, more than the {MAX_JSON_BYTES} a JSON config may have")
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read: {short(e, 160)}") from e
    return parse_json(data, str(path), error, constants)


_REQUIRED = object()


def json_field(
    data: Mapping,
    key: str,
    kind: type,
    source: str,
    error: ErrorKind,
    default: object = _REQUIRED,
    limits: tuple[float, float] | None = None,
):
    """``data[key]`` checked to be of ``kind`` (int excludes bool; float accepts ints, finite only) and, for numbers,
    inside ``limits`` (inclusive); ``default`` when the key is absent or null (an error when there is no default)."""
    value = data.get(key)
    if value is None:
        if default is _REQUIRED:
            raise error(f"{source}: {short(key, 60)!r} is missing; expected {kind.__name__}")
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if ok and kind is float:
        ok = math.isfinite(value)
    if not ok:
        raise error(f"{source}: {short(key, 60)!r} is {short(repr(value), 60)}, expected {kind.__name__}")
    if limits is not None and not limits[0] <= value <= limits[1]:
        raise error(f"{source}: {short(key, 60)!r} is {short(repr(value), 60)}, expected {limits[0]}..{limits[1]}")
    return value


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def read_shard_index(index: Path, error: ErrorKind) -> list[Path]:
    """The shard files a ``*.index.json`` lists in its ``weight_map``, sorted, each confined to the index's folder.

    A shard name must be a relative path without ``..``; after following links the file must lie inside the folder,
    or beside the file the index itself links to (the Hugging Face cache keeps both as links into ``blobs/``).
    """
    weight_map = json_field(read_json(index, error), "weight_map", dict, str(index), error)
    names = set()
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise error(f"{index}: weight_map[{short(key, 60)!r}] is {short(repr(name), 60)}, expected a file name")
        names.add(name)
    if not names:
        raise error(f"{index}: its weight_map lists no shard files")
    if len(names) > MAX_SHARDS:
        raise error(f"{index}: lists {len(names)} shard files, more than {MAX_SHARDS}")
    folder = index.parent
    roots = (folder.resolve(), index.resolve().parent)
    shards = []
    for name in sorted(names):
        relative = Path(name)
        if relative.is_absolute() or relative.drive or ".." in relative.parts or "\\" in name:
            raise error(f"{index}: shard {short(name)!r} is not a plain file name inside {folder}")
        shard = folder / relative
        if entry_kind(shard) == "missing":
            raise error(f"{index}: lists shard {short(name)!r}, which is not in {folder}")
        check_entry(shard, error)
        if not any(_inside(shard.resolve(), root) for root in roots):
            raise error(f"{index}: shard {short(name)!r} links outside {folder}")
        shards.append(shard)
    return shards
