"""What every plain test shares: the seed, the thread count, and the one builder of tiny PixArt transformers."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from dit_fixtures import official_state_dict, reference_model, tiny_config

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@cache
def _shared_reference(micro: bool, seed: int, changes: tuple):
    """diffusers builds a 42-block model slowly: a reference nobody modifies is built once per session."""
    config = tiny_config(micro, **dict(changes))
    return config, reference_model(config, seed)


def build_tiny(micro: bool = False, seed: int = 0, kv=None, shared: bool = False, **changes):
    """A tiny diffusers reference (``dit_fixtures.reference_model``) and our transformer with its weights.

    Args:
        micro: PixArt-alpha 1024-MS micro-conditions; changes: ``PixArtConfig`` fields (``tiny_config``).
        seed: of the reference's random weights. kv: our model's ``KVCompress``.
        shared: reuse one reference per (micro, seed, changes) for the session; only for tests that never modify
            it (tgate and cache-dit patch theirs for good).
    Returns:
        (config, reference, ours), ``ours`` in eval mode.
    """
    from pixart import PixArtTransformer

    key = (micro, seed, tuple(sorted(changes.items())))
    config, reference = _shared_reference(*key) if shared else (tiny_config(micro, **changes), None)
    if reference is None:
        reference = reference_model(config, seed)
    ours = PixArtTransformer(config, kv_compress=kv).eval()
    ours.load_state_dict(official_state_dict(reference, config, training_extras=False))
    return config, reference, ours


@pytest.fixture()
def tiny_models():
    """``build_tiny``: tiny reference and our transformer with its weights."""
    return build_tiny
