"""Write tiny random-weight stand-ins for the model files a workflow names, so it runs where no real weights exist.

The images they make are noise: this checks plumbing (loaders, conditioning, sampling, decoding), not quality.

- PixArt DiT (PixArtSigmaDiTLoader, UNETLoader): official keys, the real width (1152, 16 heads, so ComfyUI's built-in
  PixArt can load it too) and T5-XXL caption width (4096), 1 block; Sigma or alpha from the variant or the file name.
- T5 (PixArtSigmaT5Loader): a 1-layer T5 v1.1 of width 4096 with the full 32128-token vocabulary (so ComfyUI's
  bundled tokenizer fits), stored in bf16.
- T5 for ComfyUI's CLIPLoader (type pixart, a ``.pth``): ComfyUI builds a full T5-XXL whatever the file holds and
  recognises one by the shape of block 23's gated feed-forward. The file holds that, the norms and a token
  embedding as small strided views; the weights it lacks ComfyUI leaves uninitialised, so the server must hand out
  zeroed memory for them (tests/comfy/comfy_session.py does, for its test server).
- VAE (VAELoader): a tiny autoencoder in the TAESD layout, which ComfyUI's VAELoader recognises from its keys.
- PixArt ControlNet (PixArtSigmaControlNetLoader): one copy of a tiny DiT's block (scripts/tiny_controlnet.py); the
  DiT files of such a workflow get 2 blocks, since a ControlNet's residual goes to block 1.
- Control image (LoadImage): a 512 px PNG with a few shapes (edges for Canny), in ``input/`` beside MODELS_DIR
  (ComfyUI's input folder under the same --base-directory).
- Training data (PixArtSigmaTrainingDataset): two random 96 x 96 PNGs with captions in ComfyUI's input folder beside
  the models folder (``<models>/../input/<folder>``), when that folder does not exist yet.

Usage: python scripts/tiny_weights.py MODELS_DIR WORKFLOW_API.json [...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import save_file

import pixart
from pixart.detect import HEAD_DIM
from pixart.errors import PixArtError, short
from scripts.model_files import ModelFile, model_files
from scripts.tiny_controlnet import tiny_controlnet

log = logging.getLogger("tiny_weights")
T5 = {"d_model": 4096, "layers": 1, "heads": 2, "d_kv": 16, "d_ff": 64, "vocab": 32128, "buckets": 32}
XXL_FF_KEY = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"  # (10240, 4096) tells ComfyUI "T5-XXL"


def _rand(*shape: int, scale: float | None = None, generator=None) -> torch.Tensor:
    std = scale if scale is not None else (shape[-1] ** -0.5 if len(shape) > 1 else 0.02)
    return torch.randn(*shape, generator=generator) * std


def dit_state_dict(variant: str, depth: int = 1, seed: int = 0, hidden: int | None = None) -> dict[str, torch.Tensor]:
    """A PixArt state dict with official keys: the ``variant`` preset with ``depth`` blocks, random weights, plus the
    null caption ``y_embedder.y_embedding`` that official files carry. ``hidden``: a width C other than the preset's
    (1152), a multiple of HEAD_DIM with C / HEAD_DIM heads (as our loader reads it; ComfyUI's own PixArt needs 1152)."""
    config = pixart.VARIANTS[variant].replace(depth=depth)
    if hidden is not None:
        if hidden < HEAD_DIM or hidden % HEAD_DIM:
            raise PixArtError(f"tiny DiT width: expected a multiple of {HEAD_DIM}, found {hidden}")
        config = config.replace(hidden_size=hidden, num_heads=hidden // HEAD_DIM)
    torch.manual_seed(seed)
    with torch.no_grad():
        model = pixart.PixArtTransformer(config)
        for p in model.parameters():  # no zero-initialised gates: every weight matters
            p.add_(torch.randn_like(p) * 0.02)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["y_embedder.y_embedding"] = torch.randn(config.caption_tokens, config.caption_channels) * 0.1
    return state


def t5_state_dict(seed: int = 0, d_model: int = T5["d_model"]) -> dict[str, torch.Tensor]:
    """A 1-layer T5 v1.1 encoder (gated GELU) in ComfyUI's single-file key layout, ``d_model`` wide."""
    g = torch.Generator().manual_seed(seed)
    d, inner, ff = d_model, T5["heads"] * T5["d_kv"], T5["d_ff"]
    state = {"shared.weight": _rand(T5["vocab"], d, scale=1.0, generator=g)}
    for i in range(T5["layers"]):
        p = f"encoder.block.{i}.layer."
        for name in "qkv":
            state[f"{p}0.SelfAttention.{name}.weight"] = _rand(inner, d, generator=g)
        state[f"{p}0.SelfAttention.o.weight"] = _rand(d, inner, generator=g)
        state[f"{p}0.layer_norm.weight"] = torch.ones(d)
        state[f"{p}1.DenseReluDense.wi_0.weight"] = _rand(ff, d, generator=g)
        state[f"{p}1.DenseReluDense.wi_1.weight"] = _rand(ff, d, generator=g)
        state[f"{p}1.DenseReluDense.wo.weight"] = _rand(d, ff, generator=g)
        state[f"{p}1.layer_norm.weight"] = torch.ones(d)
    state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = _rand(
        T5["buckets"], T5["heads"], scale=0.1, generator=g
    )
    state["encoder.final_layer_norm.weight"] = torch.ones(d)
    return {k: v.to(torch.bfloat16) for k, v in state.items()}


def comfy_t5xxl_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-in that ComfyUI's CLIPLoader takes for T5-XXL (see the module docstring), for a ``.pth`` file.

    It holds block 23's gated feed-forward input (by whose shape ComfyUI recognises T5-XXL), zero norms inside the
    blocks, a final norm of ones and a token embedding whose rows are windows of one random sequence (a strided
    view, so the file stays small). With the unloaded matrices left at zero, every block adds nothing and the
    output is the normalised embedding of each token: prompt-dependent, finite and cheap."""
    g = torch.Generator().manual_seed(seed)
    vocab, width = T5["vocab"], 4096
    sequence = torch.randn(vocab + width - 1, generator=g)
    state = {"shared.weight": sequence.as_strided((vocab, width), (1, 1))}  # row i = sequence[i : i + width]
    state[XXL_FF_KEY] = torch.zeros(1, 1).expand(10240, width)
    for i in range(24):
        state[f"encoder.block.{i}.layer.0.layer_norm.weight"] = torch.zeros(width)
        state[f"encoder.block.{i}.layer.1.layer_norm.weight"] = torch.zeros(width)
    state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(32, 64)
    state["encoder.final_layer_norm.weight"] = torch.ones(width)
    return state


def _taesd_part(prefix: str, layers: list, latent: int, g) -> dict[str, torch.Tensor]:
    state = {}
    for index, layer in enumerate(layers):
        if layer == "block":  # three 3x3 convs with ReLUs between; 64 -> 64, identity skip
            for j in (0, 2, 4):
                state[f"{prefix}{index}.conv.{j}.weight"] = _rand(64, 64, 3, 3, scale=0.02, generator=g)
                state[f"{prefix}{index}.conv.{j}.bias"] = torch.zeros(64)
        elif layer is not None:
            n_in, n_out = (latent if v == "L" else v for v in layer[:2])
            state[f"{prefix}{index}.weight"] = _rand(n_out, n_in, 3, 3, scale=(9 * n_in) ** -0.5, generator=g)
            if layer[2]:
                state[f"{prefix}{index}.bias"] = torch.zeros(n_out)
    return state


def vae_state_dict(scale: float, latent: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random tiny autoencoder in the TAESD layout: Sequential encoder/decoder of 3x3 convs (None = no weights:
    ReLU, clamp, upsample) plus the latent ``vae_scale``/``vae_shift``."""
    g = torch.Generator().manual_seed(seed)
    down = [(64, 64, False), "block", "block", "block"]
    encoder = [(3, 64, True), "block", *down, *down, *down, (64, "L", True)]
    up = ["block", "block", "block", None, (64, 64, False)]
    decoder = [None, ("L", 64, True), None, *up, *up, *up, "block", (64, 3, True)]
    state = _taesd_part("taesd_encoder.", encoder, latent, g) | _taesd_part("taesd_decoder.", decoder, latent, g)
    return state | {"vae_scale": torch.tensor(scale), "vae_shift": torch.tensor(0.0)}


def dit_variant(name: str, variant: str) -> str:
    """The preset to build for a DiT file: the loader's variant, else guessed from the file name."""
    if variant != "auto":
        return variant
    lower = name.lower()
    if "sigma" in lower:
        return "sigma-2k" if "2k" in lower else "sigma-512" if "512" in lower else "sigma-1024"
    return "alpha-512" if "512" in lower else "alpha-1024"


def _kind(file: ModelFile) -> str:
    """What to write for ``file``: a DiT preset name, "t5", "comfy-t5xxl", "controlnet", "vae-sdxl" or "vae-sd15"."""
    if file.class_type == "PixArtSigmaDiTLoader":
        variant = file.inputs.get("variant")
        if variant != "auto" and variant not in pixart.VARIANTS:
            raise PixArtError(
                f"node {file.node_id} {file.class_type}, variant: expected 'auto' or one of "
                f"{sorted(pixart.VARIANTS)}, found {short(repr(variant))}"
            )
        return dit_variant(file.name, variant)
    if file.class_type == "UNETLoader":
        return dit_variant(file.name, "auto")
    if file.class_type == "PixArtSigmaT5Loader":
        return "t5"
    if file.class_type == "CLIPLoader":
        return "comfy-t5xxl"
    if file.class_type == "PixArtSigmaControlNetLoader":
        return "controlnet"
    return "vae-sdxl" if "xl" in file.name.lower() else "vae-sd15"


def model_path(models_dir: str | Path, file: ModelFile) -> Path:
    """Where the stand-in for ``file`` goes: ``models_dir/<sub-folder>/<name>``. The one guard of this writer: a name
    that is not a relative path staying inside its sub-folder (absolute, ``..``, a link leading out) is refused."""
    folder = Path(models_dir) / file.folder
    name = file.name
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise PixArtError(f"{file.where()}: expected a model file name, found {short(repr(name))}")
    parts = name.replace("\\", "/").split("/")
    path = folder / name
    inside = not (PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or PureWindowsPath(name).root)
    inside = inside and ".." not in parts and path.resolve().is_relative_to(folder.resolve())
    if not inside:
        raise PixArtError(
            f"{file.where()}: {short(name)!r} is not a name inside {folder} (an absolute path, '..' or a link "
            "leading out of it); tiny stand-ins are only written inside the models folder"
        )
    return path


def control_images(models_dir: str | Path, prompt: dict) -> list[Path]:
    """Where the images the prompt's LoadImage nodes name go: ``input/`` beside ``models_dir`` (checked as
    ``model_path`` checks model names)."""
    base = Path(models_dir).parent
    return [
        model_path(base, ModelFile(str(node_id), "LoadImage", "image", node["inputs"].get("image"), "input"))
        for node_id, node in prompt.items()
        if isinstance(node, dict) and node.get("class_type") == "LoadImage" and isinstance(node.get("inputs"), dict)
    ]


def write_control_image(path: Path) -> None:
    """A 512 px RGB PNG: white, with a dark rectangle and a grey disc (edges for Canny)."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (512, 512), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([96, 160, 320, 420], fill=(30, 30, 30))
    draw.ellipse([280, 80, 440, 240], fill=(128, 128, 128))
    image.save(path)


def write(path: Path, state: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        torch.save(state, path)
    else:
        raise PixArtError(f"{path}: cannot write a tiny stand-in of type {path.suffix!r} (use .safetensors or .pth)")


def write_tiny_models(models_dir: str | Path, prompts: list[dict], force: bool = False) -> list[Path]:
    """Write every file the prompts load under ``models_dir`` (skipping existing ones unless ``force``). Every name is
    checked (``model_path``) before anything is written."""
    wanted = {}
    for prompt in prompts:
        for file in model_files(prompt):
            wanted.setdefault(model_path(models_dir, file), (_kind(file), file.where()))
    images = [path for prompt in prompts for path in control_images(models_dir, prompt)]
    depth = 2 if any(what == "controlnet" for what, _ in wanted.values()) else 1  # a ControlNet feeds block 1
    written = []
    for path in dict.fromkeys(images):
        if force or not path.exists():
            write_control_image(path)
            written.append(path)
    for path, (what, where) in wanted.items():
        if path.exists() and not force:
            continue
        if what == "t5":
            state = t5_state_dict()
        elif what == "comfy-t5xxl":
            state = comfy_t5xxl_state_dict()
        elif what.startswith("vae-"):
            state = vae_state_dict(0.13025 if what == "vae-sdxl" else 0.18215)
        elif what == "controlnet":
            state = tiny_controlnet(dit_state_dict("sigma-1024", depth=2))
        else:
            state = dit_state_dict(what, depth=depth)
        try:
            write(path, state)
        except PixArtError as e:
            raise PixArtError(f"{where}: {e}") from e
        log.info("wrote tiny %s: %s", what, path)
        written.append(path)
    return written + write_tiny_datasets(Path(models_dir).parent / "input", prompts)


def write_tiny_datasets(input_dir: Path, prompts: list[dict], images: int = 2) -> list[Path]:
    """For each PixArtSigmaTrainingDataset of the prompts whose folder (relative to ComfyUI's input folder,
    ``input_dir``) does not exist: ``images`` random 96 x 96 PNGs with a caption .txt each."""
    import numpy as np
    from PIL import Image

    written = []
    for node in (n for p in prompts for n in p.values() if n.get("class_type") == "PixArtSigmaTrainingDataset"):
        folder = input_dir / str(node["inputs"]["folder"])
        if Path(str(node["inputs"]["folder"])).is_absolute() or ".." in Path(folder).parts or folder.exists():
            continue
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(images):
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
            (folder / f"{i}.txt").write_text(f"tiny training image number {i}")
        log.info("wrote tiny training dataset: %s", folder)
        written.append(folder)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir", help="ComfyUI models folder to write into")
    parser.add_argument("workflows", nargs="+", help="API-format workflow files naming the models")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prompts = [json.loads(Path(w).read_text()) for w in args.workflows]
    try:
        write_tiny_models(args.models_dir, prompts, args.force)
    except PixArtError as e:
        print(f"tiny_weights: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
