"""PixArt Sigma Train: trains a copy of our MODEL's DiT with ``pixart.training.Trainer`` (LoRA or full) on a
PIXART_TRAINING_DATA, step by step with ComfyUI's progress bar and Cancel, and hands back the trained MODEL (a
clone: the LoRA as ComfyUI patches, or the trained weights as ``set`` patches), the trained result and a loss curve.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import comfy.lora
import comfy.model_management as mm
import comfy.utils
import torch
from torch import nn

from ...pixart import PixArtTransformer
from ...pixart.training import PRESETS, LoraAdapter, Trainer, TrainingError, TrainSettings, preset
from ...pixart.training.save import lora_file_tensors
from ...pixart.training.settings import LORA_TARGET_SETS, MODES, PRECISIONS
from ..dit.model import model_noise_schedule
from ..node_api import CATEGORY, io, schema
from .dataset import Dataset, Sample, TrainingData, batches

log = logging.getLogger(__name__)
WHO = "PixArt Sigma Train"
PREFIX = "diffusion_model."
Trained = io.Custom("PIXART_TRAINED")
DEFAULT = PRESETS["pixart_sigma_512_lora"]


@dataclass
class TrainedResult:
    """The PIXART_TRAINED value: the fp32 trained DiT (full) or the LoRA adapter (lora), and the settings and
    per-step losses of the run."""

    model: PixArtTransformer
    lora: LoraAdapter | None
    settings: TrainSettings
    losses: list[float]


def stack(samples: list[Sample], drop: torch.Tensor, data: Dataset, device) -> tuple:
    """A batch: latents (B, C_in, h, w), captions (B, L, C), masks (B, L) on ``device``; samples where ``drop``
    (B,) is True get the empty caption."""
    captions = [data.empty_caption if d else s.caption for s, d in zip(samples, drop.tolist(), strict=True)]
    masks = [data.empty_mask if d else s.mask for s, d in zip(samples, drop.tolist(), strict=True)]
    latents = torch.stack([s.latent for s in samples])
    return latents.to(device), torch.stack(captions).to(device), torch.stack(masks).to(device)


def trainable_copy(model) -> PixArtTransformer:
    """An fp32 ``PixArtTransformer`` holding the MODEL's current weights (its patches applied), on its device."""

    mm.load_models_gpu([model])
    source = model.model.diffusion_model
    copy = PixArtTransformer(source.config)
    copy.load_state_dict({k: v.detach().float() for k, v in source.state_dict().items()})
    return copy.to(mm.get_torch_device())


def trained_model(model, result: TrainedResult):
    """A clone of the MODEL giving the trained prediction: the LoRA through ComfyUI's own loading of the file
    tensors; for a full fine-tune every trained ``weight`` / ``bias`` as a ``set`` patch (after the MODEL's own
    patches, which the training started from) and the other parameters (modulation tables) as object patches,
    since ComfyUI patches only modules' weights and biases."""

    clone = model.clone()
    if result.lora is not None:
        tensors = lora_file_tensors(result.lora)
        key_map = comfy.lora.model_lora_keys_unet(clone.model, {})
        clone.add_patches(comfy.lora.load_lora(tensors, key_map, log_missing=False), 1.0)
        return clone
    known = clone.model_state_dict()
    patches = {}
    for name, value in result.model.state_dict().items():
        key = PREFIX + name
        if key not in known:
            raise TrainingError(f"{WHO}: the trained weight {name} has no place in the MODEL")
        if name.rsplit(".", 1)[-1] in ("weight", "bias"):
            patches[key] = ("set", (value.detach(),))
        else:
            clone.add_object_patch(key, nn.Parameter(value.detach().to(known[key].dtype), requires_grad=False))
    clone.add_patches(patches, 1.0)
    return clone


def loss_image(losses: list[float], width: int = 512, height: int = 256) -> torch.Tensor:
    """(1, height, width, 3) float image of the loss per step (a line over a white background)."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    low, high = min(losses), max(losses)
    span = high - low or 1.0
    margin = 20
    points = [
        (
            margin + i * (width - 2 * margin) / max(1, len(losses) - 1),
            height - margin - (v - low) / span * (height - 2 * margin),
        )
        for i, v in enumerate(losses)
    ]
    draw.rectangle((margin, margin, width - margin, height - margin), outline="gray")
    draw.line(points if len(points) > 1 else points * 2, fill="blue", width=2)
    draw.text(
        (margin + 4, 4), f"loss {losses[0]:.4g} -> {losses[-1]:.4g} (max {high:.4g}, min {low:.4g})", fill="black"
    )
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def run_training(model, data: Dataset, settings: TrainSettings, steps: int) -> TrainedResult:
    """``steps`` optimiser steps of ``Trainer`` over ``batches(data, batch_size)`` in order; caption dropout draws
    from a generator seeded with the run's seed. Cancel stops between steps. Gradients on, outside the inference
    mode ComfyUI runs nodes in."""
    with torch.inference_mode(False), torch.enable_grad():
        return _run_training(model, data, settings, steps)


def _run_training(model, data: Dataset, settings: TrainSettings, steps: int) -> TrainedResult:
    from tqdm import tqdm

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise TrainingError(f"{WHO} steps: expected an integer >= 1, got {steps!r}")
    if len(data) == 0:
        raise TrainingError(f"{WHO} dataset: holds no samples")
    net = trainable_copy(model)
    trainer = Trainer(net, settings, model_noise_schedule(model))
    drops = torch.Generator().manual_seed(settings.seed)
    runs = batches(data, settings.batch_size)
    bar, losses = comfy.utils.ProgressBar(steps), []
    with tqdm(total=steps, desc=WHO) as console:
        for step in range(steps):
            mm.throw_exception_if_processing_interrupted()
            samples = runs[step % len(runs)]
            drop = torch.rand(len(samples), generator=drops) < data.caption_dropout
            latents, captions, masks = stack(samples, drop, data, trainer.device)
            terms = trainer.step(latents, captions, masks)
            losses.append(float(terms.total))
            console.set_postfix({"loss": f"{losses[-1]:.4f}"})
            console.update(1)
            bar.update_absolute(step + 1, steps)
    log.info("%s: %d steps, loss %.5g -> %.5g", WHO, steps, losses[0], losses[-1])
    net.eval()
    if trainer.lora is not None:
        trainer.lora.remove()
    return TrainedResult(net, trainer.lora, settings, losses)


class PixArtSigmaTrain(io.ComfyNode):
    """Fine-tunes a PixArt MODEL as the reference trains it (epsilon MSE + optional VB term, integer timesteps)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaTrain",
            display_name="PixArt Sigma Train",
            category=f"{CATEGORY}/training",
            search_aliases=["pixart lora training", "pixart fine-tune"],
            description=(
                "PixArt Sigma Train: LoRA or full fine-tune of a PixArt MODEL on a PixArt Sigma Training Dataset, "
                "as the reference (pixartengine) trains: epsilon (or v) MSE plus the learned-sigma VB term, uniform "
                "integer timesteps of the MODEL's schedule, AdamW with warm-up and gradient clipping. The input MODEL "
                "is not changed; the output MODEL samples with the trained weights."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The PixArt MODEL to train (PixArt Sigma DiT Loader); left unchanged."),
                TrainingData.Input("dataset", tooltip="From PixArt Sigma Training Dataset."),
                io.Combo.Input(
                    "preset",
                    options=list(PRESETS),
                    default="pixart_sigma_512_lora",
                    tooltip="Reference config the run starts from (AdamW betas 0.9/0.999, eps 1e-8); every input "
                    "below replaces its value (the defaults below are pixart_sigma_512_lora's).",
                ),
                io.Combo.Input("mode", options=list(MODES), default=DEFAULT.mode,
                               tooltip="lora: train low-rank adapters only; full: train every transformer weight."),
                io.Int.Input("steps", default=500, min=1, max=10**7, tooltip="Optimiser steps (>= 1)."),
                io.Float.Input("learning_rate", default=DEFAULT.learning_rate, min=0.0, max=1.0, step=1e-7,
                               tooltip="AdamW learning rate after warm-up (> 0; 1e-4 LoRA, 2e-6 full in the presets)."),
                io.Int.Input("lora_rank", default=DEFAULT.lora_rank, min=1, max=4096, tooltip="LoRA rank r (>= 1)."),
                io.Float.Input("lora_alpha", default=DEFAULT.lora_alpha, min=0.0, max=4096.0, step=0.5,
                               tooltip="LoRA alpha: the update is alpha / r x B A."),
                io.Combo.Input("lora_targets", options=list(LORA_TARGET_SETS), default=DEFAULT.lora_targets,
                               tooltip="attention: to_q/to_k/to_v/to_out.0 of both attentions (the reference); "
                               "all_linear: every linear layer."),
                io.Int.Input("batch_size", default=DEFAULT.batch_size, min=1, max=4096,
                             tooltip="Samples per step, taken from one aspect-ratio bin."),
                io.Int.Input("warmup_steps", default=0, min=0, max=10**7,
                             tooltip="The learning rate rises linearly from 0 over these steps."),
                io.Float.Input("grad_clip", default=DEFAULT.max_grad_norm, min=0.0, max=1000.0, step=0.001,
                               tooltip="Clip the gradient L2 norm to this; 0 turns clipping off."),
                io.Float.Input("weight_decay", default=DEFAULT.weight_decay, min=0.0, max=10.0, step=0.001,
                               tooltip="AdamW decoupled weight decay."),
                io.Combo.Input("precision", options=list(PRECISIONS), default=DEFAULT.precision,
                               tooltip="bf16: bf16 autocast with fp32 trained weights; fp32: everything fp32."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute each transformer block in the backward pass (less memory)."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Seeds LoRA init, noise, timesteps and caption dropout: same seed, same run."),
                io.Boolean.Input("vb_loss", default=True,
                                 tooltip="Add the learned-sigma VB term (the reference does; needs a learned-sigma "
                                 "model)."),
            ],
            outputs=[
                io.Model.Output(tooltip="A clone of the MODEL with the trained weights, for sampling in this graph."),
                Trained.Output(tooltip="The trained LoRA or weights, for PixArt Sigma Save Trained."),
                io.Image.Output(tooltip="The loss of every training step as a curve."),
            ],
        )  # fmt: skip

    @classmethod
    def execute(cls, model, dataset, preset, mode, steps, learning_rate, lora_rank, lora_alpha, lora_targets,
                batch_size, warmup_steps, grad_clip, weight_decay, precision, gradient_checkpointing, seed,
                vb_loss) -> io.NodeOutput:  # fmt: skip
        settings = settings_of(preset, mode=mode, learning_rate=learning_rate, lora_rank=lora_rank,
                               lora_alpha=lora_alpha, lora_targets=lora_targets, batch_size=batch_size,
                               warmup_steps=warmup_steps, grad_clip=grad_clip, weight_decay=weight_decay,
                               precision=precision, gradient_checkpointing=gradient_checkpointing, seed=seed,
                               vb_loss=vb_loss)  # fmt: skip
        result = run_training(model, dataset, settings, steps)
        return io.NodeOutput(trained_model(model, result), result, loss_image(result.losses))


def settings_of(preset_name: str, grad_clip, **inputs) -> TrainSettings:
    """The node's inputs as TrainSettings on top of a preset; grad_clip 0 means no clipping."""
    if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or not math.isfinite(grad_clip):
        raise TrainingError(f"{WHO} grad_clip: expected a finite number >= 0, got {grad_clip!r}")
    if grad_clip < 0:
        raise TrainingError(f"{WHO} grad_clip: expected a finite number >= 0, got {grad_clip!r}")
    return preset(preset_name, max_grad_norm=float(grad_clip) if grad_clip > 0 else None, **inputs)
