"""PixArt Sigma Training Dataset: a folder of images with same-name caption ``.txt`` files -> scaled VAE latents
grouped into PixArt's aspect-ratio bins, each caption encoded by our T5 path with its own mask.

Each image is resized to cover the nearest bin of the chosen base resolution (``pixart.aspect_ratios.closest_bin``,
bicubic) and centre-cropped to it, encoded by ComfyUI's VAE and scaled by the latent format of the model family
(ComfyUI's ``process_in``: SDXL 0.13025 for Sigma, SD1.5 0.18215 for alpha), as the sampler's latents are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import comfy.latent_formats
import folder_paths
import torch

from ...pixart.aspect_ratios import BASES, closest_bin
from ...pixart.config import CAPTION_TOKENS
from ...pixart.training import TrainingError
from ..node_api import CATEGORY, io, schema

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WHO = "PixArt Sigma Training Dataset"
TrainingData = io.Custom("PIXART_TRAINING_DATA")


@dataclass
class Sample:
    """One training image: latent (C_in, h, w) scaled by the VAE factor, caption (L, C) T5 states, mask (L,)."""

    name: str
    latent: torch.Tensor
    caption: torch.Tensor
    mask: torch.Tensor


@dataclass
class Dataset:
    """The PIXART_TRAINING_DATA value: samples grouped by bin {(h, w) latent size: [Sample]}, the empty caption
    (L, C) and its mask (L,) that caption dropout puts in, and the dropout probability."""

    buckets: dict[tuple[int, int], list[Sample]]
    empty_caption: torch.Tensor
    empty_mask: torch.Tensor
    caption_dropout: float
    family: str

    def __len__(self) -> int:
        return sum(len(samples) for samples in self.buckets.values())


def batches(data: Dataset, batch_size: int) -> list[list[Sample]]:
    """The run's batches, in order: each bin (sorted by latent size) cut into consecutive groups of ``batch_size``
    (the last of a bin may be smaller); training step s uses batch s modulo their number."""
    found = []
    for key in sorted(data.buckets):
        samples = data.buckets[key]
        found += [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    return found


def find_folder(folder: str) -> Path:
    """``folder`` as given when absolute, else relative to ComfyUI's input folder; TrainingError when missing."""
    path = Path(folder.strip())
    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    if not path.is_dir():
        raise TrainingError(f"{WHO} folder: {path} is not a folder (relative names are read under ComfyUI's input)")
    return path


def image_files(path: Path) -> list[tuple[Path, Path]]:
    """(image, caption .txt) pairs of the folder, sorted by name; TrainingError naming the folder when it holds no
    image, or the file when an image has no caption or a caption no image."""
    files = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise TrainingError(f"{WHO} folder: {path} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    stems = {p.stem for p in images}
    for text in (p for p in files if p.suffix.lower() == ".txt" and p.stem not in stems):
        raise TrainingError(f"{WHO}: caption {text} has no image of the same name")
    pairs = []
    for image in images:
        caption = image.with_suffix(".txt")
        if not caption.is_file():
            raise TrainingError(f"{WHO}: image {image} has no caption file {caption.name} beside it")
        pairs.append((image, caption))
    return pairs


def read_image(path: Path, base: int) -> torch.Tensor:
    """(1, H, W, 3) float pixels in 0..1 of ``path`` resized to cover its nearest bin and centre-cropped to it;
    TrainingError naming the file when it cannot be read as an image."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise TrainingError(f"{WHO}: {path} is not a readable image ({e})") from e
    height, width = closest_bin(image.height, image.width, base)
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def encode_caption(t5, text: str, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One caption through the PIXART_T5's encode (as PixArt Sigma Text Encode does): (L, C) float32 states and
    (L,) mask on the CPU, L = the family's caption tokens."""
    with torch.no_grad():
        states, mask = t5.encode([text], max_length=CAPTION_TOKENS[family])
    return states[0].detach().float().cpu(), mask[0].cpu()


def build_dataset(t5, vae, folder: str, base: int, caption_dropout: float, family: str) -> Dataset:
    """The training data of ``folder`` (see the module docstring)."""
    latent_format = comfy.latent_formats.SDXL() if family == "sigma" else comfy.latent_formats.SD15()
    buckets: dict[tuple[int, int], list[Sample]] = {}
    for image_path, caption_path in image_files(find_folder(folder)):
        pixels = read_image(image_path, base)
        with torch.no_grad():
            latent = latent_format.process_in(vae.encode(pixels[:, :, :, :3]).float().cpu())[0]
        caption, mask = encode_caption(t5, caption_path.read_text(encoding="utf-8").strip(), family)
        buckets.setdefault(tuple(latent.shape[1:]), []).append(Sample(image_path.name, latent, caption, mask))
    empty_caption, empty_mask = encode_caption(t5, "", family)
    data = Dataset(buckets, empty_caption, empty_mask, caption_dropout, family)
    log.info("%s: %d images in bins %s from %s", WHO, len(data), sorted(buckets), folder)
    return data


class PixArtSigmaTrainingDataset(io.ComfyNode):
    """Images + captions of a folder as PixArt training data (latents in aspect-ratio bins, T5 captions)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaTrainingDataset",
            display_name="PixArt Sigma Training Dataset",
            category=f"{CATEGORY}/training",
            search_aliases=["pixart dataset", "pixart training data"],
            description=(
                "PixArt Sigma Training Dataset: reads a folder of images (png, jpg, webp, bmp) each with a caption "
                ".txt of the same name, encodes every caption with the T5 (one caption per image, with its own "
                "mask) and every image with the VAE (resized and centre-cropped to the nearest PixArt aspect-ratio "
                "bin, latents scaled by the VAE's factor), for PixArt Sigma Train."
            ),
            inputs=[
                io.String.Input(
                    "folder",
                    default="pixart_training",
                    tooltip="The image folder: an absolute path, or a name relative to ComfyUI's input folder.",
                ),
                io.Custom("PIXART_T5").Input("t5", tooltip="T5 encoder from PixArt Sigma T5 Loader."),
                io.Vae.Input("vae", tooltip="The VAE of the model being trained (SDXL VAE for PixArt-Sigma)."),
                io.Combo.Input(
                    "base_resolution",
                    options=[str(b) for b in BASES],
                    default="512",
                    tooltip="Aspect-ratio bins of this base size (pixels) the images are cropped to.",
                ),
                io.Float.Input(
                    "caption_dropout",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Probability that a sample trains with the empty caption instead of its own.",
                ),
                io.Combo.Input(
                    "model_family",
                    options=list(CAPTION_TOKENS),
                    default="sigma",
                    tooltip=f"sigma: {CAPTION_TOKENS['sigma']} T5 tokens, SDXL latent scale; alpha: "
                    f"{CAPTION_TOKENS['alpha']} tokens, SD1.5 latent scale.",
                ),
            ],
            outputs=[TrainingData.Output(tooltip="Latents and captions for PixArt Sigma Train.")],
        )

    @classmethod
    def execute(cls, folder, t5, vae, base_resolution, caption_dropout, model_family) -> io.NodeOutput:
        if model_family not in CAPTION_TOKENS:
            raise TrainingError(f"{WHO} model_family: expected one of {list(CAPTION_TOKENS)}, got {model_family!r}")
        if not isinstance(caption_dropout, (int, float)) or not 0.0 <= caption_dropout <= 1.0:
            raise TrainingError(f"{WHO} caption_dropout: expected a number in 0..1, got {caption_dropout!r}")
        data = build_dataset(t5, vae, folder, int(base_resolution), float(caption_dropout), model_family)
        return io.NodeOutput(data)
