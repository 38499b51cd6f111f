"""PixArt Sigma LoRA Loader node: applies a LoRA to a PixArt MODEL through ComfyUI's own weight adapters.

``pixart.lora`` maps every key of the file onto our modules (all or nothing) and keeps each update under the part
names ComfyUI reads; this node hands them to ``comfy.lora.load_lora`` (LoRA, LoHa, LoKr, OFT, DoRA ``dora_scale``,
``diff`` / ``set_weight`` patches) and adds the patches to a clone of the ModelPatcher, so the base weights stay
untouched: strength changes, bypassing and stacking need no reload. Fused weights (``attn.qkv``,
``cross_attn.kv_linear``) get row-offset patches ``(key, (0, start, rows))``. PEFT's DoRA, which normalises by the
updated weight's row norms where ComfyUI's ``dora_scale`` uses the base weight's, goes through a LoRAAdapter
subclass computing ``pixart.lora.peft_dora``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import comfy.lora
import folder_paths
import torch
from comfy.weight_adapter import LoRAAdapter

from ..pixart.lora import PEFT_CONFIG, PEFT_WEIGHTS, Lora, LoraError, LoraTarget, check_fit, load_lora, peft_dora
from .common import find_in_folders
from .node_api import CATEGORY, check_number, io, number_problem, schema

log = logging.getLogger(__name__)

PREFIX = "diffusion_model."  # where ComfyUI's model_base keeps the DiT's weights
PROBE_KEY = "blocks.0.attn.qkv.weight"  # present in every PixArt DiT (ours and ComfyUI's built-in one)
STRENGTH = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}
CACHED_LORAS = 4  # parsed LoRAs kept between runs, keyed by path and what changes with the content
MAX_DEPTH = 8  # folder levels below models/loras searched for PEFT adapter folders
MAX_FOLDERS = 10_000  # folders visited in one search
WHO = "PixArt Sigma LoRA Loader"


def peft_folders(base: str | Path) -> list[str]:
    """PEFT adapter folders (``adapter_config.json`` + ``adapter_model.*``) under ``base``, as ``name/`` relative
    to it (the trailing ``/`` tells folders from files, as the other loaders list them); ``base`` is not listed.

    Linked folders are followed, each real folder once (a link loop ends there), at most MAX_DEPTH levels down and
    MAX_FOLDERS folders in all; a search cut short says so in the log."""
    base = Path(base)
    found, seen = [], set()
    for root, dirs, files in os.walk(base, followlinks=True):
        here = Path(root)
        try:
            status = here.stat()
        except OSError:
            dirs[:] = []
            continue
        if (status.st_dev, status.st_ino) in seen:
            dirs[:] = []  # reached again through a link: a loop, or a second name for a folder already listed
            continue
        seen.add((status.st_dev, status.st_ino))
        if len(seen) > MAX_FOLDERS:
            log.warning("%s: stopped looking for PEFT adapter folders after %d folders", base, MAX_FOLDERS)
            break
        depth = len(here.relative_to(base).parts)
        below = sorted(d for d in dirs if not d.startswith("."))
        if depth >= MAX_DEPTH and below:
            log.warning("%s: not looking for PEFT adapter folders more than %d levels down (%s)", base, MAX_DEPTH, here)
            below = []
        dirs[:] = below
        if PEFT_CONFIG in files and any(name in files for name in PEFT_WEIGHTS) and here != base:
            found.append(here.relative_to(base).as_posix() + "/")
    return found


def lora_choices(files: Iterable[str], bases: Iterable[str | Path]) -> list[str]:
    """The names the node offers: LoRA files (as ComfyUI lists them) and PEFT adapter folders, sorted."""
    return sorted(set(files).union(*(peft_folders(b) for b in bases)), key=str.lower)


def find_lora(name: str, bases: Iterable[str | Path]) -> Path:
    """The file or PEFT folder ``name`` (relative, as listed by ``lora_choices``) in the first base holding it;
    names that leave their base (``..``, absolute paths) are refused; files symlinked into a base load."""
    try:
        return find_in_folders(bases, name, "LoRA", any_kind=True, error=LoraError)
    except FileNotFoundError as e:
        raise LoraError(str(e)) from e


def file_stamp(path: Path) -> tuple:
    """What changes when the LoRA's content does: (path, then size, device, inode, mtime and ctime in ns of the
    file, or of a PEFT folder's config and weights files). A file replaced keeping its modification time (``cp -p``,
    rsync -a, tar, unzip) still gets a new ctime or inode. LoraError naming the file when one cannot be read."""
    listed = [path / PEFT_CONFIG, *(path / name for name in PEFT_WEIGHTS)] if path.is_dir() else [path]
    files = [file for file in listed if os.path.lexists(file)]  # a folder lacking them: read_lora says what it needs
    stamp: list = [str(path)]
    for file in files:
        try:
            status = file.stat()
        except OSError as e:
            what = "a link to nothing" if os.path.islink(file) else f"unreadable ({e.strerror or type(e).__name__})"
            raise LoraError(f"{file}: {what}; the LoRA cannot be read") from e
        stamp += [status.st_size, status.st_dev, status.st_ino, status.st_mtime_ns, status.st_ctime_ns]
    return tuple(stamp)


@functools.lru_cache(maxsize=CACHED_LORAS)
def _parsed_lora(path: str, *_stamp) -> Lora:
    return load_lora(Path(path))


def cached_lora(path: Path) -> Lora:
    """The parsed LoRA at ``path``, reused while the file (or folder) is unchanged; a few are kept."""
    return _parsed_lora(*file_stamp(path))


def _lora_parts(t: LoraTarget) -> dict[str, torch.Tensor]:
    """A LoRA target under ComfyUI's part names; ComfyUI scales by alpha / r, so alpha is ``scale * r``."""
    parts = {
        "lora_up.weight": t.up,
        "lora_down.weight": t.down,
        "alpha": torch.tensor(t.scale * t.rank, dtype=torch.float64),
    }
    if t.dora_scale is not None:
        parts["dora_scale"] = t.dora_scale
    return parts


def _patch_key(key: str, chunks: int, span: tuple[int, int], prefix: str):
    """``prefix + key``, or ``(prefix + key, (0, start, rows))`` for a row block of a fused weight."""
    return prefix + key if chunks == 1 else (prefix + key, (0, span[0], span[1] - span[0]))


def comfy_lora(lora: Lora, prefix: str = PREFIX) -> tuple[dict[str, torch.Tensor], dict]:
    """The LoRA as ``comfy.lora.load_lora(tensors, key_map)`` takes it: ``{"<n>.<part>": tensor}`` and
    ``{"<n>": patch key}`` with one ``n`` per update (PEFT DoRA targets excluded: see ``comfy_patches``)."""
    updates = [(t.key, t.chunks, t.rows, _lora_parts(t)) for t in lora.targets if t.magnitude is None]
    updates += [(p.key, p.chunks, p.span, dict(p.parts)) for p in lora.patches]
    tensors, key_map = {}, {}
    for n, (key, chunks, span, parts) in enumerate(updates):
        key_map[str(n)] = _patch_key(key, chunks, span, prefix)
        tensors.update({f"{n}.{part}": tensor for part, tensor in parts.items()})
    return tensors, key_map


class PeftDoraAdapter(LoRAAdapter):
    """A ComfyUI ``LoRAAdapter`` whose DoRA is PEFT's: ``W + strength * (peft_dora(W, scale * up @ down, m) - W)``."""

    name = "peft_dora"

    def __init__(self, target: LoraTarget):
        super().__init__(set(), (target.up, target.down, target.scale * target.rank, None, None, None))
        self.target = target

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, *args, **kwargs):
        delta = self.target.delta().to(weight.device).reshape(weight.shape)
        merged = peft_dora(weight, delta, self.target.magnitude)
        weight += function(strength * (merged - weight.float())).to(weight.dtype)
        return weight


def comfy_patches(lora: Lora, prefix: str = PREFIX) -> dict:
    """ComfyUI patches for ``ModelPatcher.add_patches``: ``{key or (key, (0, start, rows)): adapter or diff}``,
    made by ComfyUI's ``comfy.lora.load_lora``; LoraError when it makes none for an update."""
    tensors, key_map = comfy_lora(lora, prefix)
    patches = comfy.lora.load_lora(tensors, key_map, log_missing=False)
    missing = [str(key) for key in key_map.values() if key not in patches]
    if missing:
        raise LoraError(f"{lora.path}: ComfyUI's weight adapters made no patch for {missing[:6]}")
    for t in lora.targets:
        if t.magnitude is not None:
            patches[_patch_key(t.key, t.chunks, t.rows, prefix)] = PeftDoraAdapter(t)
    return patches


def model_shapes(model, prefix: str = PREFIX) -> dict[str, tuple[int, ...]]:
    """{official key: shape} of the DiT inside a ModelPatcher; LoraError when it is not a PixArt model."""
    state_dict = model.model_state_dict(filter_prefix=prefix)
    shapes = {k[len(prefix) :]: tuple(v.shape) for k, v in state_dict.items()}
    if PROBE_KEY not in shapes:
        kind = type(getattr(model, "model", model)).__name__
        raise LoraError(
            f"{WHO}: the MODEL ({kind}) is not a PixArt DiT (no {prefix}{PROBE_KEY}); "
            "load it with PixArt Sigma DiT Loader or UNETLoader"
        )
    return shapes


class PixArtSigmaLoraLoader(io.ComfyNode):
    """Applies a PixArt LoRA, LyCORIS or ComfyUI-trained file (any of the namings in pixart.lora.keys) to a MODEL."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = lora_choices(folder_paths.get_filename_list("loras"), folder_paths.get_folder_paths("loras"))
        return schema(
            node_id="PixArtSigmaLoraLoader",
            display_name="PixArt Sigma LoRA Loader",
            category=CATEGORY,
            search_aliases=["pixart lora", "peft adapter"],
            description=(
                "PixArt Sigma LoRA Loader: applies a LoRA for PixArt-Sigma / PixArt-alpha to the DiT. Reads files in "
                "models/loras (diffusers, PEFT, kohya, official PixArt names; LyCORIS LoHa / LoKr / OFT / DoRA; "
                "ComfyUI's Train LoRA output with its bias updates) and PEFT adapter folders (adapter_config.json + "
                "adapter_model.safetensors, DoRA and lora_B biases included). Stops with an error naming the keys "
                "when any part of the file does not fit the model."
            ),
            inputs=[
                io.Model.Input("model", tooltip="PixArt Sigma (or PixArt-alpha) DiT to apply the LoRA to."),
                io.Combo.Input(
                    "lora_name", options=names, tooltip="LoRA file, or PEFT adapter folder (name/), in models/loras."
                ),
                io.Float.Input(
                    "strength",
                    **STRENGTH,
                    tooltip="Multiplier of the LoRA update, -10 to 10: 0 = off, 1 = as trained, negative values push "
                    "away from what the LoRA learned.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    tooltip="The PixArt Sigma model with the LoRA patched in (the input model is left unchanged)."
                )
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model=None, lora_name=None, strength=None):
        """What changes with the LoRA file's content (``file_stamp``), so that a changed file runs the node again."""
        if not isinstance(lora_name, str):
            return None  # linked from another node
        try:
            return file_stamp(find_lora(lora_name, folder_paths.get_folder_paths("loras")))
        except (LoraError, OSError):
            return lora_name  # the error is reported when the node runs

    @classmethod
    def validate_inputs(cls, strength=None) -> bool | str:
        """A non-finite or out-of-range strength, before the prompt runs (ComfyUI's own check lets NaN through)."""
        problem = number_problem("strength", strength, STRENGTH["min"], STRENGTH["max"])
        return True if problem is None else f"{WHO}: {problem}"

    @classmethod
    def execute(cls, model, lora_name: str, strength: float) -> io.NodeOutput:
        """Clone ``model`` and add the LoRA's patches at ``strength``."""
        check_number(WHO, "strength", strength, STRENGTH["min"], STRENGTH["max"])
        path = find_lora(lora_name, folder_paths.get_folder_paths("loras"))
        lora = cached_lora(path)
        check_fit(lora, model_shapes(model))
        if strength == 0:
            return io.NodeOutput(model)
        patches = comfy_patches(lora)
        patched = model.clone()
        added = patched.add_patches(patches, strength)
        missing = sorted(str(k) for k in set(patches) - set(added))
        if missing:
            raise LoraError(f"{path}: ComfyUI did not accept patches for {missing[:12]}")
        log.info("PixArt LoRA %s: %d patches at strength %g", path.name, len(added), strength)
        return io.NodeOutput(patched)
