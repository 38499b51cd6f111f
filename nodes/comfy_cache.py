"""The ComfyUI side of PixArt Sigma Cache: a ``pixart`` step cache driven by ComfyUI's samplers.

The node stores :class:`CacheSettings` in the MODEL's ``transformer_options`` (``CACHE_SETTINGS``) and adds an
``OUTER_SAMPLE`` wrapper (:func:`sample_wrapper`). At the start of each sampling run the wrapper puts a fresh
:class:`CacheRun` into a clone of the run's ``transformer_options`` (``CACHE_RUN``), so nothing is shared between
runs, clones or LoRA-patched copies; ``ComfyPixArtTransformer._forward`` hands each model call to it.

What a step is: the sampling run's schedule ``sigmas`` (s_0 > s_1 > ... > s_n = 0) has n steps; a model call at
sigma s belongs to step i when s_{i+1} < s <= s_i. The first call of each new step (per batch composition, see
below) is a cache step, numbered from 0 at the first step inside start_percent..end_percent; every other call
(a second or third evaluation of a multi-call sampler within the same step: heun, dpm_2, dpmpp_2s_ancestral,
dpmpp_sde, ...) and every call outside the window runs the full model, uncached and guided. One-call-per-step
samplers (euler, dpmpp_2m, uni_pc, ...) thus give cache step i = schedule step i.

Batch composition: ComfyUI usually runs the negative and positive prompt in one batch (``cond_or_uncond`` [1, 0]);
short of memory it runs them in separate calls. Each composition gets its own cache state: DBCache then measures
its residual diff on each half separately (cache-dit measures the whole CFG batch), so the halves may reuse
different steps. T-GATE averages the two halves' cross-attention at its gate step and then runs the negative prompt
alone, which needs both halves in one call: it refuses other compositions (CFG 1, split batches, several or area
conditionings) with an error.

T-GATE's unguided steps after the gate: the model call still receives both halves (ComfyUI batches them before the
model wrappers run); the cache runs the negative rows only and returns their output for both halves, so ComfyUI's
CFG ``uncond + cfg (cond - uncond)`` gives the negative prediction, as T-GATE's pipeline does. Done at the model call
rather than with a sampler hook, because the model call is where the cache state is, and it uses only what both
supported ComfyUI versions pass to every model (``cond_or_uncond``, ``sigmas``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import comfy.model_patcher
import comfy.patcher_extension
from torch import Tensor

from ..pixart.caches import DBCache, DBCacheConfig, StepCache, TGate, TGateConfig, negative_rows_only

log = logging.getLogger(__name__)
CACHE_SETTINGS = "pixart_cache"  # transformer_options key: the node's CacheSettings
CACHE_RUN = "pixart_cache_run"  # transformer_options key: the CacheRun of the sampling run in progress
COND, UNCOND = 0, 1  # ComfyUI's cond_or_uncond entries
COMPOSITION_NAMES = {(UNCOND, COND): "negative+positive", (COND, UNCOND): "positive+negative"}
ModelCall = Callable[..., Tensor]


@dataclass(frozen=True)
class CacheSettings:
    """What PixArt Sigma Cache was set to: the method's config and the active part of the schedule (percent of the
    sampling schedule, ComfyUI's start/end percent)."""

    method: str  # "T-GATE", "first-block cache" or "DBCache"
    config: TGateConfig | DBCacheConfig
    start_percent: float = 0.0
    end_percent: float = 1.0

    def new_cache(self) -> StepCache:
        return TGate(self.config) if isinstance(self.config, TGateConfig) else DBCache(self.config)

    def describe(self) -> str:
        fields = ", ".join(f"{k} {v}" for k, v in vars(self.config).items())
        return f"{self.method} ({fields}; start_percent {self.start_percent}, end_percent {self.end_percent})"


class CacheRun:
    """The cache state of one sampling run: the step of each model call, a ``pixart`` step cache per batch
    composition, and the calls that ran uncached.

    Args:
        settings: the node's settings.
        sigmas: (n + 1,) the run's schedule, from s_0 down to 0.
        start_sigma, end_sigma: the cache acts on calls with end_sigma < sigma <= start_sigma.
    """

    def __init__(self, settings: CacheSettings, sigmas: Tensor, start_sigma: float, end_sigma: float) -> None:
        self.settings = settings
        self.inner_sigmas = [float(s) for s in sigmas.flatten()[1:-1]]  # s_1 .. s_(n-1)
        self.start_sigma, self.end_sigma = start_sigma, end_sigma
        self.caches: dict[tuple[int, ...], StepCache] = {}
        self.last_step: dict[tuple[int, ...], int] = {}
        self.calls = 0
        self.uncached_calls = 0

    def step_of(self, sigma: float) -> int:
        """Schedule step i of a call at ``sigma``: s_(i+1) < sigma <= s_i (to float32 rounding)."""
        return sum(1 for s in self.inner_sigmas if s >= sigma * (1 - 1e-5))

    def __call__(
        self,
        run: ModelCall,
        depth: int,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        caption_mask: Tensor | None,
        c_size: Tensor | None,
        c_ar: Tensor | None,
        transformer_options: dict,
    ) -> Tensor:
        """One model call. ``run(x, timesteps, context, caption_mask, c_size, c_ar, block_hooks=...)`` is the DiT
        forward -> (B, C_in, H, W) epsilon; ``depth``: its number of blocks; the other arguments are the call's
        (batch B = chunks of ``transformer_options["cond_or_uncond"]``)."""
        self.calls += 1
        args = (x, timesteps, context, caption_mask, c_size, c_ar)
        sigma = float(transformer_options["sigmas"].flatten()[0])
        if not self.end_sigma < sigma <= self.start_sigma:
            self.uncached_calls += 1
            return run(*args)
        composition = tuple(transformer_options.get("cond_or_uncond", ()))
        step = self.step_of(sigma)
        last = self.last_step.get(composition)
        if last is not None and step <= last:  # another call within the step
            self.uncached_calls += 1
            return run(*args)
        self.last_step[composition] = step
        cache = self.caches.get(composition)
        if cache is None:
            self._check_composition(composition)
            cache = self.caches[composition] = self.settings.new_cache()
        cache_step = 0 if last is None else cache.step + 1
        guided = cache.guided(cache_step)
        cache.begin_step(cache_step)
        kwargs = cache.forward_kwargs(depth)
        if guided:
            out = run(*args, **kwargs)
        else:  # T-GATE after its gate: the negative chunk of the batch only, its output for every chunk
            chunk = x.shape[0] // len(composition)
            negative = slice(composition.index(UNCOND) * chunk, (composition.index(UNCOND) + 1) * chunk)
            out = negative_rows_only(partial(run, **kwargs), args, negative, len(composition))
        cache.end_step()
        return out

    def _check_composition(self, composition: tuple[int, ...]) -> None:
        if isinstance(self.settings.config, TGateConfig) and sorted(composition) != [COND, UNCOND]:
            halves = "+".join("positive" if c == COND else "negative" for c in composition) or "none"
            raise ValueError(
                "PixArt Sigma Cache: T-GATE needs the positive and the negative prompt in one model call, got a call "
                f"with {halves}. ComfyUI splits them when CFG is 1, when memory is short, or with several or area "
                "conditionings. Use CFG above 1, one conditioning each, or first-block cache / DBCache."
            )

    def summary(self) -> str:
        """The per-generation log line: model calls, and for each batch composition steps computed vs reused."""
        parts = []
        for composition, cache in self.caches.items():
            name = COMPOSITION_NAMES.get(composition, "+".join(map(str, composition)))
            prefix = f"{name}: " if len(self.caches) > 1 else ""
            parts.append(prefix + cache.stats.summary())
        text = f"PixArt Sigma Cache, {self.settings.describe()}: {self.calls} model calls"
        if self.uncached_calls:
            text += f", {self.uncached_calls} uncached (outside start/end percent or a step's further calls)"
        return text + ("; " + " | ".join(parts) if parts else "; the cache never acted")


def sample_wrapper(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
    """``OUTER_SAMPLE`` wrapper: a fresh :class:`CacheRun` for this sampling run in a clone of the guider's model
    options, and its summary in the log when the run ends (also after an error or Cancel)."""
    guider = executor.class_obj
    original = guider.model_options
    settings: CacheSettings = original["transformer_options"][CACHE_SETTINGS]
    sampling = guider.model_patcher.get_model_object("model_sampling")
    start = float(sampling.percent_to_sigma(settings.start_percent))
    end = float(sampling.percent_to_sigma(settings.end_percent))
    cache_run = CacheRun(settings, sigmas, start, end)
    guider.model_options = comfy.model_patcher.create_model_options_clone(original)
    guider.model_options["transformer_options"][CACHE_RUN] = cache_run
    try:
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
    finally:
        guider.model_options = original
        log.info(cache_run.summary())


def with_cache(model, settings: CacheSettings | None):
    """A clone of the MODEL (ModelPatcher) whose sampling runs use the step cache of ``settings`` (None: no cache);
    it replaces the cache an earlier PixArt Sigma Cache node set."""
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    options.pop(CACHE_SETTINGS, None)
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, CACHE_SETTINGS)
    if settings is not None:
        options[CACHE_SETTINGS] = settings
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, CACHE_SETTINGS, sample_wrapper)
    return patched
