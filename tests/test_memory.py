"""The activation-memory estimate of a sampling step (``pixart.memory``), its parts counted by hand."""

import pixart
from pixart.memory import sampling_memory


def test_memory_estimate_counts_tokens_hidden_batch_and_kv():
    """The estimate's parts by hand for sigma-1024 at 1024 px (4096 tokens, C = 1152, MLP 4608), fp16."""
    config = pixart.VARIANTS["sigma-1024"]
    full = sampling_memory(config, (1, 4, 128, 128), 4.5, 2)
    assert (full.batch, full.tokens, full.kv_tokens) == (2, 4096, 4096)
    assert full.activations == 2 * 4096 * (6 * 1152 + 2 * 4608) * 2
    assert full.attention == 2 * 2 * 4096 * 1152 * 2
    assert full.latents == 6 * 2 * (4 * 128 * 128) * 4
    one = sampling_memory(config, (1, 4, 128, 128), 1.0, 2)
    assert one.batch == 1 and one.total * 2 == full.total  # cfg 1: no negative batch
    everywhere = pixart.KVCompress("avgpool", 2, tuple(range(config.depth)))
    assert sampling_memory(config, (1, 4, 128, 128), 4.5, 2, everywhere).kv_tokens == 1024
    half = pixart.KVCompress("avgpool", 2)  # the second half only: the first half's blocks still see every token
    assert sampling_memory(config, (1, 4, 128, 128), 4.5, 2, half).kv_tokens == 4096
    chunked = sampling_memory(config, (1, 4, 128, 128), 4.5, 4, token_chunk=1024)
    assert chunked.activations == (2 * 4096 * 5 * 1152 + 1024 * 2 * 4608) * 4
