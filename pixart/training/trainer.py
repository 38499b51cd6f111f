"""One training run: LoRA or full fine-tune of a ``PixArtTransformer`` with the reference's optimiser and objective.

AdamW (decoupled weight decay) over the trainable weights, the global gradient L2 norm clipped to
``max_grad_norm`` (torch's ``clip_grad_norm_``), lr warm-up as diffusers' ``constant_with_warmup`` (step s of a
warm-up of n uses lr * s / n, then lr), bf16 autocast or fp32, optional gradient checkpointing of each transformer
block. Every random number (LoRA init, noise, timesteps) comes from one CPU generator seeded with ``seed``, so the
same settings and batches repeat a run exactly on the same device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..block_hooks import BlockFn, BlockInputs
from ..sampling.schedules import NoiseSchedule
from .lora import LoraAdapter
from .objective import LossTerms, check_vb, diffusion_loss, sample_timesteps, schedule_tables
from .settings import TrainingError, TrainSettings


def checkpoint_block(index: int, x: Tensor, inputs: BlockInputs, run: BlockFn) -> Tensor:
    """A block hook that recomputes the block in the backward pass instead of keeping its activations."""
    return checkpoint(run, x, use_reentrant=False)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """lr multiplier of optimiser step ``step`` (0-based): step / warmup_steps during warm-up, then 1."""
    return step / warmup_steps if step < warmup_steps else 1.0


class Trainer:
    """Trains ``model`` in place (full) or through a ``LoraAdapter`` (lora).

    Args:
        model: a ``PixArtTransformer`` with fp32 weights.
        settings: ``TrainSettings`` (or a preset from ``pixart.training.preset``).
        schedule: the model's training noise schedule (default: PixArt's linear betas, epsilon prediction).
    """

    def __init__(self, model: nn.Module, settings: TrainSettings, schedule: NoiseSchedule | None = None):
        self.model, self.settings = model, settings
        self.schedule = schedule or NoiseSchedule()
        config = model.config
        if settings.vb_loss:
            check_vb(config.out_channels, config.in_channels, self.schedule)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.lora: LoraAdapter | None = None
        if settings.mode == "lora":
            model.requires_grad_(False)
            self.lora = LoraAdapter(
                model, settings.lora_rank, settings.lora_alpha, settings.lora_targets, self.generator
            )
            params = list(self.lora.parameters())
        else:
            model.requires_grad_(True)
            params = list(model.parameters())
        low = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
        if low:
            raise TrainingError(
                f"training needs fp32 trainable weights; {low[0]} is {model.get_parameter(low[0]).dtype}"
            )
        self.parameters = params
        self.optimizer = torch.optim.AdamW(
            params,
            lr=settings.learning_rate,
            betas=(settings.beta1, settings.beta2),
            eps=settings.eps,
            weight_decay=settings.weight_decay,
        )
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_factor(step, settings.warmup_steps)
        )
        self.step_count = 0
        self.device = next(model.parameters()).device
        self.tables = schedule_tables(self.schedule, self.device)
        self.hooks = (checkpoint_block,) if settings.gradient_checkpointing else ()

    def draw(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """Noise (B, C_in, H, W) and timesteps (B,) for a batch, from the run's generator (drawn on CPU)."""
        timesteps = sample_timesteps(latents.shape[0], self.schedule, self.generator)
        noise = torch.randn(latents.shape, generator=self.generator, dtype=torch.float32)
        return noise.to(device=latents.device, dtype=latents.dtype), timesteps.to(latents.device)

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """bf16 autocast on the model's device, or nothing for fp32."""
        if self.settings.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    def loss(
        self,
        latents: Tensor,
        caption: Tensor,
        caption_mask: Tensor | None,
        noise: Tensor,
        timesteps: Tensor,
        hooks=(),
    ) -> LossTerms:
        """The objective on one batch with given noise and timesteps (autograd as the caller has it)."""
        with self.precision():
            return diffusion_loss(
                self.model,
                latents,
                caption,
                caption_mask,
                noise,
                timesteps,
                self.schedule,
                vb=self.settings.vb_loss,
                block_hooks=hooks,
                tables=self.tables,
            )

    def step(
        self,
        latents: Tensor,
        caption: Tensor,
        caption_mask: Tensor | None = None,
        noise: Tensor | None = None,
        timesteps: Tensor | None = None,
    ) -> LossTerms:
        """One optimiser step on a batch; noise and timesteps are drawn from the run's generator unless given.

        Args:
            latents: (B, C_in, H, W) scaled VAE latents; caption: (B, L, caption_channels); caption_mask: (B, L).
        Returns:
            The batch's loss terms (detached).
        """
        for name, value in (("latents", latents), ("caption", caption)):
            if not torch.isfinite(value).all():
                raise TrainingError(f"training batch: {name} holds NaN or infinite values")
        if noise is None or timesteps is None:
            drawn_noise, drawn_t = self.draw(latents)
            noise = drawn_noise if noise is None else noise
            timesteps = drawn_t if timesteps is None else timesteps
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.loss(latents, caption, caption_mask, noise, timesteps, self.hooks)
        if not torch.isfinite(terms.total):
            raise TrainingError(
                f"training step {self.step_count}: the loss is {terms.total.item()} (mse {terms.mse.item()}, "
                f"vb {terms.vb.item()}); lower learning_rate or check the latents"
            )
        terms.total.backward()
        if self.settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.step_count += 1
        return LossTerms(*(t.detach() for t in terms))

    @torch.no_grad()
    def evaluate(
        self, latents: Tensor, caption: Tensor, caption_mask: Tensor | None, noise: Tensor, timesteps: Tensor
    ) -> LossTerms:
        """The objective on a fixed probe batch, without gradients (the model is left in eval mode)."""
        self.model.eval()
        return self.loss(latents, caption, caption_mask, noise, timesteps)
