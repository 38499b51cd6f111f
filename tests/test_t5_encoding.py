"""pixart.text_encoder, encoding: prompts encoded as diffusers' PixArt pipelines do (truncation, preprocessing), the
encode arguments, devices, the caption width check and the benchmark script."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from t5_fixtures import LONG_PROMPT, PROMPTS, single_file

from pixart.text_encoder import SIGMA_MAX_LENGTH, check_caption_width, load_t5

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("no_network")


# --- encoding semantics: diffusers parity, truncation, preprocessing ----------------------------------------------


def test_matches_diffusers_encode_prompt(tmp_path, t5_model, tokenizer, tok_dirs):
    diffusers = pytest.importorskip("diffusers")
    pipe = diffusers.PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=t5_model, vae=None, transformer=None, scheduler=None
    )
    encoder = load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[1], dtype=torch.float32)
    cpu = torch.device("cpu")
    for prompts, max_length in ((PROMPTS, SIGMA_MAX_LENGTH), ([LONG_PROMPT, "a dog"], 16)):
        embeds, mask, neg_embeds, neg_mask = pipe.encode_prompt(
            prompts, negative_prompt="", device=cpu, max_sequence_length=max_length
        )
        hidden, our_mask = encoder.encode(prompts, max_length=max_length)
        neg_hidden, our_neg_mask = encoder.encode([""] * len(prompts), max_length=max_length)
        assert torch.equal(our_mask, mask) and torch.equal(our_neg_mask, neg_mask)
        torch.testing.assert_close(hidden, embeds, atol=1e-6, rtol=0)
        torch.testing.assert_close(neg_hidden, neg_embeds, atol=1e-6, rtol=0)
    assert our_neg_mask.sum(dim=1).tolist() == [1, 1]  # "" is just </s>
    assert our_mask[0].all() and our_mask[1].sum() < max_length


def test_truncation_warns_with_dropped_count(tmp_path, caplog, t5_model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[1], dtype=torch.float32)
    total = len(tokenizer(LONG_PROMPT.lower()).input_ids)  # with </s>
    with caplog.at_level(logging.WARNING, logger="pixart.t5.encoder"):
        encoder.encode([LONG_PROMPT, "dog"], max_length=total)  # fits exactly: no warning
        assert not caplog.records
        _, mask = encoder.encode([LONG_PROMPT, "dog"], max_length=total - 5)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "dropped the last 5 tokens" in record.getMessage() and "prompt 0" in record.getMessage()
    assert mask[0].sum() == total - 5


def test_prompts_are_lowercased_and_stripped_like_diffusers(tmp_path, t5_model, tok_dirs):
    encoder = load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[1], dtype=torch.float32)
    upper, _ = encoder.encode("  A Small CAT  ", max_length=16)
    lower, _ = encoder.encode("a small cat", max_length=16)
    assert torch.equal(upper, lower)
    kept, _ = encoder.encode("A Small CAT", max_length=16, lowercase=False)
    assert not torch.equal(kept, lower)


@pytest.mark.parametrize(("prompts", "max_length"), [([], 300), (["ok", 3], 300), ("ok", 0), ("ok", 2.5)])
def test_bad_encode_arguments(tmp_path, prompts, max_length, t5_model, tok_dirs):
    encoder = load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[1], dtype=torch.float32)
    with pytest.raises(ValueError, match="prompts|max_length"):
        encoder.encode(prompts, max_length=max_length)


# --- devices ----------------------------------------------------------------------------------------------------------


def test_offload_device_round_trip(tmp_path, t5_model, tok_dirs):
    encoder = load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[1], device="cpu", offload_device="cpu")
    moves: list[torch.device] = []
    original_to = encoder.model.to

    def spy(device, *args, **kwargs):
        moves.append(torch.device(device))
        return original_to(device, *args, **kwargs)

    encoder.model.to = spy
    hidden, mask = encoder.encode(["a cat"], max_length=8)
    assert moves == [torch.device("cpu"), torch.device("cpu")]  # to the compute device, then back to offload
    assert hidden.device == encoder.output_device == torch.device("cpu") and mask.device == hidden.device
    assert encoder.to("cpu") is encoder and encoder.device == torch.device("cpu")


def test_check_caption_width():
    check_caption_width(4096, 4096)
    with pytest.raises(ValueError, match="T5 hidden size 2048 does not match the DiT's caption channels 4096"):
        check_caption_width(2048, 4096)


# --- benchmark script stays runnable --------------------------------------------------------------------------------


def test_bench_script_smoke():
    cmd = [sys.executable, str(REPO / "scripts" / "bench_t5.py"), "--size", "tiny", "--dtypes", "float32"]
    out = subprocess.run([*cmd, "--repeats", "1", "--batch", "2"], capture_output=True, text=True, check=True)
    (line,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert line["dtype"] == "float32" and line["encode_s"] > 0 and line["load_s"] > 0
