"""What every plain test shares: the seed, the thread count, and the one builder of tiny PixArt transformers."""

from __future__ import annotations

import socket
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


# T5: the tokenizer and encoder of the text-encoder tests (transformers is imported only when they run).


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading must never reach for the network (no downloads, no hub lookups)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="session")
def tok_dirs(tmp_path_factory: pytest.TempPathFactory):
    """(spm-only folder, tokenizer.json folder) of a tokenizer trained here (t5_fixtures)."""
    import t5_fixtures

    return t5_fixtures.write_tokenizer_dirs(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="session")
def tokenizer(tok_dirs):
    """transformers' T5TokenizerFast of ``tok_dirs``."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(tok_dirs[1]), local_files_only=True)


@pytest.fixture(scope="session")
def t5_model(tokenizer):
    """A tiny random transformers T5EncoderModel for ``tokenizer``."""
    import t5_fixtures

    return t5_fixtures.tiny_t5(t5_fixtures.tiny_config(len(tokenizer)))
