"""Classifier-free-guided epsilon of a PixArt transformer, one model call per sampling step, with a step cache."""

from __future__ import annotations

import torch
from torch import Tensor

from ..model import PixArtTransformer
from ..sampling import guidance
from .base import StepCache
from .tgate import negative_rows_only


class GuidedDenoiser:
    """``denoiser(step, x, t) -> epsilon`` for a sampler (diffusers' PixArtSigmaPipeline conventions).

    Guided steps run one (2B, ...) call, negative half first, and return ``eps_neg + scale (eps_pos - eps_neg)``;
    steps the cache marks unguided (T-GATE after its gate) run the negative half alone and return its epsilon;
    ``guidance_scale <= 1`` runs the positive caption alone. Captions are (B, L, caption_channels) with (B, L)
    masks, the negative the same shape as the positive.
    """

    def __init__(
        self,
        model: PixArtTransformer,
        caption: Tensor,
        caption_mask: Tensor | None,
        negative: Tensor,
        negative_mask: Tensor | None,
        guidance_scale: float,
        cache: StepCache | None = None,
    ) -> None:
        if negative.shape != caption.shape:
            raise ValueError(f"negative caption {tuple(negative.shape)} must match the caption {tuple(caption.shape)}")
        self.model, self.cache, self.scale = model, cache, guidance_scale
        self.positive, self.negative = (caption, caption_mask), (negative, negative_mask)

    def __call__(self, step: int, x: Tensor, t: Tensor) -> Tensor:
        """x: (B, C_in, H, W) model input at sampling step ``step`` (0-based, 0 starts a generation); t: scalar or
        (B,) timestep -> (B, C_in, H, W) guided epsilon."""
        cache, c_in = self.cache, x.shape[1]
        guide = self.scale > 1
        if guide:
            x_in = torch.cat([x, x])
            caption = torch.cat([self.negative[0], self.positive[0]])
            mask = _cat_masks(self.negative[1], self.positive[1], self.positive[0])
        else:
            x_in = x
            caption, mask = self.positive
        t = t.reshape(-1).expand(x_in.shape[0]) if torch.is_tensor(t) else torch.full((x_in.shape[0],), float(t))
        kwargs = {}
        if cache is not None:
            cache.begin_step(step)
            kwargs = cache.forward_kwargs(len(self.model.blocks))

        def run(*args: Tensor | None) -> Tensor:
            return self.model(*args, **kwargs)[:, :c_in]

        args = (x_in, t, caption, mask)
        if not guide:
            out = run(*args)
        elif cache is not None and not cache.guided(step):
            out = negative_rows_only(run, args, slice(0, x.shape[0]), 1)
        else:
            out = guidance(*run(*args).chunk(2), self.scale)
        if cache is not None:
            cache.end_step()
        return out


def _cat_masks(negative: Tensor | None, positive: Tensor | None, caption: Tensor) -> Tensor | None:
    if negative is None and positive is None:
        return None
    ones = caption.new_ones(caption.shape[:2])
    return torch.cat([ones if negative is None else negative, ones if positive is None else positive])
