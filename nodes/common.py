"""Shared bits of the nodes: the category, model-file lookup in ComfyUI's models folders, input checks, caption
padding."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePath, PureWindowsPath

import folder_paths
import torch
import torch.nn.functional as F

from ..pixart.errors import PixArtError
from ..pixart.io import ErrorKind, check_entry, entry_kind

CATEGORY = "PixArt-Sigma"

# Files that mark a folder as a loadable model folder (Hugging Face / diffusers layouts).
FOLDER_MARKERS = ("config.json", "model_index.json", "transformer/config.json", "text_encoder/config.json")
TOKENIZER_MARKERS = ("tokenizer.json", "spiece.model", "tokenizer/tokenizer.json", "tokenizer/spiece.model")
SKIP_DIRS = {"tokenizer", "text_encoder", "transformer", "vae", "scheduler", "unet", "text_encoder_2"}


def model_folders(
    bases: Iterable[str | os.PathLike], markers: Iterable[str] = FOLDER_MARKERS, max_depth: int = 2
) -> list[str]:
    """Folders holding one of ``markers`` (default: a model's config.json or model_index.json) under ``bases``, as
    ``name/`` relative to their base.

    The trailing ``/`` tells a folder from a file in the node's list; sub-folders of a diffusers pipeline (its
    ``transformer/``, ``text_encoder/``) are not listed on their own."""
    found = set()
    for base in bases:
        base = Path(base)
        if not base.is_dir():
            continue
        stack = [(base, 0)]
        while stack:
            folder, depth = stack.pop()
            for child in sorted(folder.iterdir()):
                if not child.is_dir() or child.name.startswith(".") or child.name in SKIP_DIRS:
                    continue
                if any((child / marker).is_file() for marker in markers):
                    found.add(child.relative_to(base).as_posix() + "/")
                elif depth + 1 < max_depth:
                    stack.append((child, depth + 1))
    return sorted(found, key=str.lower)


def model_choices(kinds: Iterable[str]) -> list[str]:
    """Files ComfyUI lists for the folder kinds (e.g. ``diffusion_models``) plus model folders, sorted, no repeats;
    the files inside a listed folder (shards, a pipeline's parts) are left out: the folder stands for them."""
    files: set[str] = set()
    folders: set[str] = set()
    for kind in kinds:
        files.update(folder_paths.get_filename_list(kind))
        folders.update(model_folders(folder_paths.get_folder_paths(kind)))
    files = {f for f in files if not any(f.startswith(folder) for folder in folders)}
    return sorted(files | folders, key=str.lower)


def find_in_folders(
    bases: Iterable[str | os.PathLike],
    name: str,
    what: str = "model",
    any_kind: bool = False,
    error: ErrorKind = PixArtError,
) -> Path:
    """The file or folder ``name`` (relative, as ComfyUI lists it; a trailing ``/`` means a folder unless
    ``any_kind``) in the first of ``bases`` holding it, as listed: links are not resolved, so a Hugging Face cache
    link ``snapshots/<rev>/x.safetensors -> ../../blobs/<hash>`` keeps its name (and its format) for the readers.

    ``name`` itself must stay inside its folder (no ``..``, not absolute); what lies in the folder is the user's,
    so a file or folder symlinked into it loads, as ComfyUI's own loaders load it.
    Raises FileNotFoundError naming the folders searched, or saying why the name is refused; ``error`` (the
    loader's kind) when the name exists but is not what was asked for (a FIFO, a device, a dangling link...)."""
    bases = [Path(base) for base in bases]
    parts = PurePath(name.rstrip("/")).parts
    if not parts or PurePath(name).is_absolute() or PureWindowsPath(name).drive or ".." in parts:
        raise FileNotFoundError(f"{what} {name!r} not found: names must stay inside their models folder")
    wanted = ("file", "folder") if any_kind else ("folder",) if name.endswith("/") else ("file",)
    present = None  # the first listed entry of another kind
    for base in bases:
        path = base.joinpath(*parts)
        kind = entry_kind(path)
        if kind in wanted:
            return path
        if present is None and kind != "missing":
            present = path
    if present is not None:  # check_entry raises, saying what the entry is instead
        check_entry(present, error, wanted, f"{what} {' or '.join(wanted)}")
    searched = [str(base) for base in bases]
    raise FileNotFoundError(
        f"{what} {name!r} not found in models folders {searched}; put it there and press R to refresh"
    )


def find_model(kinds: Iterable[str], name: str, error: ErrorKind = PixArtError) -> Path:
    """The file or folder ``name`` (as listed by :func:`model_choices`) in the first ComfyUI models folder of
    ``kinds`` holding it (see :func:`find_in_folders`; ``error`` is the loader's error kind)."""
    bases = [base for kind in kinds for base in folder_paths.get_folder_paths(kind)]
    return find_in_folders(bases, name, error=error)


def pick(options: dict, choice: str, what: str):
    """``options[choice]`` with a short error naming the valid choices."""
    try:
        return options[choice]
    except KeyError:
        raise ValueError(f"{what}: {choice!r} is not one of {list(options)}") from None


def torch_dtype(name: str | None) -> torch.dtype | None:
    """``torch.<name>`` (None stays None); a short error on a PyTorch that lacks it (e.g. float8)."""
    if name is not None and not hasattr(torch, name):
        raise ValueError(f"this PyTorch ({torch.__version__}) has no {name}; pick another dtype")
    return None if name is None else getattr(torch, name)


def check_latent(config, shape: tuple[int, ...], who: str) -> None:
    """ValueError unless a latent of ``shape`` suits a PixArt ``config``: 4 channels, sides a multiple of the patch."""
    vae = "SD1.5" if config.family == "alpha" else "SDXL"
    if len(shape) != 4 or shape[1] != config.in_channels:
        raise ValueError(
            f"{who}: the latent has shape {tuple(shape)}, expected {config.in_channels} channels ({vae}-VAE latent); "
            f"start from PixArt Sigma Resolution or EmptyLatentImage, or VAEEncode with a {vae} VAE"
        )
    if shape[2] % config.patch_size or shape[3] % config.patch_size:
        side = 8 * config.patch_size
        raise ValueError(
            f"{who}: image size {8 * shape[3]}x{8 * shape[2]} px is not a multiple of {side} px; "
            f"use PixArt Sigma Resolution or a width and height divisible by {side}"
        )


def pad_caption(caption: torch.Tensor, mask: torch.Tensor | None, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (B, L, C) caption states to a multiple of ``tokens`` (300 Sigma, 120 alpha); build the (B, L') mask.

    Every given token is attended unless ``mask`` (a conditioning's ``attention_mask``, (B or 1, M)) says otherwise,
    so maskless conditioning (ComfyUI's CLIPTextEncode) works. The fixed length lets cond and uncond batch."""
    b, length, _ = caption.shape
    full = torch.ones(b, length, dtype=torch.float32)
    if mask is not None:
        mask = mask.reshape(mask.shape[0], -1).float().cpu()
        m = min(length, mask.shape[1])
        full[:, :m] = mask[:, :m] if mask.shape[0] == b else mask[:1, :m]
    target = max(tokens, -(-length // tokens) * tokens)
    if target > length:
        caption = F.pad(caption, (0, 0, 0, target - length))
        full = F.pad(full, (0, target - length))
    return caption, full
