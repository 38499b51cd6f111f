"""PixArt Sigma LoRA Loader node: applies a LoRA to a PixArt MODEL as ComfyUI weight patches.

The LoRA is normalised by ``pixart.lora`` to official weight keys and handed to the ModelPatcher as low-rank
patches, so the base weights stay untouched: strength changes, bypassing and stacking need no reload. Fused
weights (``attn.qkv``, ``cross_attn.kv_linear``) get row-offset patches ``(key, (0, start, rows))``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..pixart.lora import PEFT_CONFIG, PEFT_WEIGHTS, Lora, LoraError, check_fit, load_lora
from .common import find_in_folders
from .node_api import CATEGORY, check_number, io, number_problem, schema

log = logging.getLogger(__name__)

PREFIX = "diffusion_model."  # where ComfyUI's model_base keeps the DiT's weights
PROBE_KEY = "blocks.0.attn.qkv.weight"  # present in every PixArt DiT (ours and ComfyUI's built-in one)
STRENGTH = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}
CACHED_LORAS = 4  # parsed LoRAs kept between runs, keyed by path and modification time
WHO = "PixArt Sigma LoRA Loader"


def peft_folders(base: str | Path) -> list[str]:
    """PEFT adapter folders (``adapter_config.json`` + ``adapter_model.*``) under ``base``, as ``name/`` relative
    to it (the trailing ``/`` tells folders from files, as the other loaders list them); ``base`` is not listed."""
    base = Path(base)
    found = []
    for root, dirs, files in os.walk(base, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if PEFT_CONFIG in files and any(name in files for name in PEFT_WEIGHTS) and Path(root) != base:
            found.append(Path(root).relative_to(base).as_posix() + "/")
    return found


def lora_choices(files: Iterable[str], bases: Iterable[str | Path]) -> list[str]:
    """The names the node offers: LoRA files (as ComfyUI lists them) and PEFT adapter folders, sorted."""
    return sorted(set(files).union(*(peft_folders(b) for b in bases)), key=str.lower)


def find_lora(name: str, bases: Iterable[str | Path]) -> Path:
    """The file or PEFT folder ``name`` (relative, as listed by ``lora_choices``) in the first base holding it;
    names that leave their base (``..``, absolute paths) are refused; files symlinked into a base load."""
    try:
        return find_in_folders(bases, name, "LoRA", any_kind=True)
    except FileNotFoundError as e:
        raise LoraError(str(e)) from e


def file_stamp(path: Path) -> tuple[str, float]:
    """(path, newest modification time of the file or of the folder and its files): changes when the LoRA does."""
    files = [path, *path.iterdir()] if path.is_dir() else [path]
    return str(path), max(f.stat().st_mtime for f in files)


@functools.lru_cache(maxsize=CACHED_LORAS)
def _parsed_lora(path: str, _mtime: float) -> Lora:
    return load_lora(Path(path))


def cached_lora(path: Path) -> Lora:
    """The parsed LoRA at ``path``, reused while the file (or folder) is unchanged; a few are kept."""
    return _parsed_lora(*file_stamp(path))


def comfy_patches(lora: Lora, prefix: str = PREFIX) -> dict:
    """ComfyUI patches for ``ModelPatcher.add_patches``: ``{key or (key, (0, start, rows)): LoRAAdapter}``.

    ``LoRAAdapter`` weights are ``(up, down, alpha, mid, dora_scale, reshape)`` and it scales by alpha / r,
    so alpha is passed as ``scale * r``.
    """
    from comfy.weight_adapter import LoRAAdapter

    patches = {}
    for t in lora.targets:
        key = prefix + t.key
        if t.chunks > 1:
            start, stop = t.rows
            key = (key, (0, start, stop - start))
        patches[key] = LoRAAdapter(set(), (t.up, t.down, t.scale * t.rank, None, None, None))
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
    """Applies a PixArt LoRA (diffusers, PEFT, kohya or official names) to a PixArt MODEL."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        names = lora_choices(folder_paths.get_filename_list("loras"), folder_paths.get_folder_paths("loras"))
        return schema(
            node_id="PixArtSigmaLoraLoader",
            display_name="PixArt Sigma LoRA Loader",
            category=CATEGORY,
            search_aliases=["pixart lora", "peft adapter"],
            description=(
                "PixArt Sigma LoRA Loader: applies a LoRA for PixArt-Sigma / PixArt-alpha to the DiT. Reads files in "
                "models/loras (diffusers, PEFT, kohya or official PixArt key names) and PEFT adapter folders "
                "(adapter_config.json + adapter_model.safetensors). Stops with an error naming the keys when the "
                "LoRA does not fit the model."
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
        """The LoRA file's path and modification time, so that a changed file runs the node again."""
        import folder_paths

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
        import folder_paths

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
