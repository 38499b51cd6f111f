"""Trainable LoRA on our PixArt modules that equals PEFT's LoRA on diffusers' ``PixArtTransformer2DModel``.

PEFT adapts diffusers modules (``transformer_blocks.N.attn1.to_q`` ...). Our model keeps the official fused layout:
self-attention q, k, v are row blocks 0-2 of ``blocks.N.attn.qkv``, cross-attention k, v row blocks 0-1 of
``blocks.N.cross_attn.kv_linear`` (``pixart.checkpoints.keymap``). A ``LoraLayer`` holds one PEFT pair
(A: (r, in), B: (rows, r)) per diffusers module inside an official Linear and adds
``alpha / r * B (A x)`` to that module's rows of the output through a forward hook, so the model's own parameters
and names stay untouched. PEFT's initialisation: A uniform in +-1/sqrt(in) (kaiming-uniform, a = sqrt(5)), B zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints.keymap import ModuleTarget, diffusers_module_names, diffusers_module_target
from .settings import LORA_TARGET_SETS, TrainingError

# The reference's target_modules (pixartengine pixart_sigma_512_lora): both attentions' projections.
ATTENTION_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
_ATTENTION = re.compile(r"^transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")


def target_modules(model: nn.Module, targets: str) -> list[tuple[str, ModuleTarget]]:
    """(diffusers module name, official module and row chunk) of every module a target set adapts in ``model``.

    ``attention``: to_q, to_k, to_v, to_out.0 of attn1 and attn2 in every block (the reference's LoRA);
    ``all_linear``: every Linear with a diffusers counterpart (attention, MLP, caption projection, timestep and
    size embedders, adaLN-single, final projection).
    """
    if targets not in LORA_TARGET_SETS:
        raise TrainingError(f"training setting lora_targets: expected one of {LORA_TARGET_SETS}, got {targets!r}")
    found = []
    for template in diffusers_module_names():
        indices = range(len(model.blocks)) if "{i}" in template else (None,)
        for i in indices:
            name = template.format(i=i) if i is not None else template
            if targets == "attention" and not _ATTENTION.match(name):
                continue
            target = diffusers_module_target(name)
            try:
                module = model.get_submodule(target.module)
            except AttributeError:  # micro-condition embedders of alpha-1024 only
                continue
            if getattr(module, "weight", None) is not None and module.weight.ndim == 2:
                found.append((name, target))
    return found


class LoraLayer(nn.Module):
    """The LoRA pairs inside one official Linear (out_features, in_features), split into ``chunks`` row blocks.

    Each adapted chunk c has ``down[k]`` (r, in) and ``up[k]`` (out / chunks, r); chunks no pair adapts get 0.
    """

    def __init__(
        self,
        weight: Tensor,
        parts: list[tuple[int, str]],
        chunks: int,
        rank: int,
        scale: float,
        generator: torch.Generator | None,
    ):
        super().__init__()
        out_features, in_features = weight.shape
        rows = out_features // chunks
        self.chunks, self.scale = chunks, scale
        self.parts = tuple(chunk for chunk, _ in parts)  # row block of each pair
        self.names = tuple(name for _, name in parts)  # diffusers module of each pair
        bound = 1.0 / math.sqrt(in_features)
        downs = [(torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound for _ in parts]
        self.down = nn.ParameterList(nn.Parameter(d.to(weight.device)) for d in downs)
        self.up = nn.ParameterList(nn.Parameter(torch.zeros(rows, rank, device=weight.device)) for _ in parts)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out) update, the pairs' outputs at their rows, zeros elsewhere."""
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.down[0].dtype)
        pieces: list[Tensor | None] = [None] * self.chunks
        for chunk, down, up in zip(self.parts, self.down, self.up, strict=True):
            pieces[chunk] = F.linear(F.linear(x, down), up) * self.scale
        shape = next(p for p in pieces if p is not None)
        pieces = [torch.zeros_like(shape) if p is None else p for p in pieces]
        return pieces[0] if self.chunks == 1 else torch.cat(pieces, dim=-1)

    def fused(self) -> tuple[Tensor, Tensor]:
        """The pairs as one LoRA of the whole weight: down (k r, in) the A stacked, up (out, k r) the B placed
        block-diagonally at their rows; scaled by alpha / r like the pairs (so a file stores alpha = scale * k r)."""
        down = torch.cat([d.detach() for d in self.down], dim=0)
        rank = self.down[0].shape[0]
        rows = self.up[0].shape[0]
        up = down.new_zeros(rows * self.chunks, rank * len(self.parts))
        for k, (chunk, u) in enumerate(zip(self.parts, self.up, strict=True)):
            up[chunk * rows : (chunk + 1) * rows, k * rank : (k + 1) * rank] = u.detach()
        return down, up


class LoraAdapter(nn.Module):
    """Trainable LoRA attached to a ``PixArtTransformer`` through forward hooks (``remove()`` detaches it).

    Args:
        model: the transformer; its own parameters are not changed or frozen here.
        rank: r; alpha: the update is alpha / r * B A (PEFT without rsLoRA).
        targets: "attention" or "all_linear" (``target_modules``).
        generator: draws A (PEFT's init); B starts at zero, so the attached model equals the model.
    """

    def __init__(
        self,
        model: nn.Module,
        rank: int = 32,
        alpha: float = 32.0,
        targets: str = "attention",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise TrainingError(f"training setting lora_rank: expected an integer >= 1, got {rank!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise TrainingError(f"training setting lora_alpha: expected a finite number > 0, got {alpha!r}")
        self.rank, self.alpha, self.targets = rank, float(alpha), targets
        groups: dict[str, tuple[int, list[tuple[int, str]]]] = {}
        for name, target in target_modules(model, targets):
            groups.setdefault(target.module, (target.chunks, []))[1].append((target.chunk, name))
        self.modules_official = tuple(groups)  # official module name of each layer, in order
        self.layers = nn.ModuleList()
        self._handles = []
        for official, (chunks, parts) in groups.items():
            module = model.get_submodule(official)
            layer = LoraLayer(module.weight, parts, chunks, rank, self.alpha / rank, generator)
            self.layers.append(layer)
            self._handles.append(module.register_forward_hook(_adding_hook(layer)))

    @property
    def scale(self) -> float:
        """alpha / r."""
        return self.alpha / self.rank

    def remove(self) -> None:
        """Detach from the model (the adapter keeps its weights)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def pairs(self) -> Iterator[tuple[str, Tensor, Tensor]]:
        """(diffusers module name, A (r, in), B (rows, r)) of every pair, as PEFT holds them."""
        for layer in self.layers:
            yield from zip(layer.names, layer.down, layer.up, strict=True)

    def fused(self) -> Iterator[tuple[str, Tensor, Tensor, float]]:
        """(official module, down (k r, in), up (out, k r), alpha) of every adapted Linear: the same update as
        whole-weight LoRAs (the form ComfyUI's patcher and our loader apply to the fused official weights)."""
        for official, layer in zip(self.modules_official, self.layers, strict=True):
            down, up = layer.fused()
            yield official, down, up, self.scale * down.shape[0]


def _adding_hook(layer: LoraLayer):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output + layer(args[0]).to(output.dtype)

    return hook
