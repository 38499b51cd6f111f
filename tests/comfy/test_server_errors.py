"""What a user sees from the session's ComfyUI server (marker ``comfy``) when something is wrong: short errors that
name the problem, checks before a prompt runs, sizes refused before allocation; and Cancel and model reuse."""

from __future__ import annotations

import json
import math
import re
import time

import pytest
from workflow_latents import fast, nodes_of, prompts_of

from scripts.comfy_server import PromptRejected, error_message

pytestmark = pytest.mark.comfy


def failure(server, prompt: dict) -> str:
    entry = server.wait(server.queue(prompt), timeout=300)
    assert entry["status"]["status_str"] == "error"
    return error_message(entry)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"4": {"ckpt_name": "not_a_pixart.safetensors"}}, "not a PixArt transformer checkpoint"),
        ({"1": {"t5_name": "t5_narrow.safetensors"}}, "does not match the DiT's caption channels 4096"),
        ({"5": {"aspect_ratio": "custom (width x height, snapped)"}, "6": {"steps": 1}}, None),
    ],
    ids=["wrong-dit-file", "t5-width", "snapped-size-runs"],
)
def test_user_errors_are_short_and_actionable(server, change, expected):
    prompt = fast(prompts_of("examples")["pixart_sigma_1024"], "test_errors")
    for node_id, inputs in change.items():
        prompt[node_id]["inputs"].update(inputs)
    if expected is None:
        prompt["5"]["inputs"].update(width=250, height=250)
        server.run(prompt, timeout=300)  # 250 px is snapped to 256 px: no error
        return
    message = failure(server, prompt)
    assert expected in message and len(message) < 1200, message


def test_size_the_model_cannot_take(server):
    prompt = fast(prompts_of("examples")["pixart_sigma_stock_ksampler"], "test_size")
    (latent_id,) = nodes_of(prompt, "EmptyLatentImage")
    prompt[latent_id]["inputs"].update(width=264, height=264)  # 33 latent pixels: not a multiple of the patch
    message = failure(server, prompt)
    assert "264x264 px is not a multiple of 16 px" in message, message


def test_interrupt_stops_sampling(server):
    steps = 5000  # only this test samples this many: its progress bar is the only one counting to it
    prompt = fast(prompts_of("examples")["pixart_sigma_1024"], "test_interrupt", steps=steps)
    prompt_id = server.queue(prompt)
    deadline = time.monotonic() + 120
    while not re.search(rf"\b[1-9]\d*/{steps} \[", server.log()):  # a step done: sampling is under way
        assert time.monotonic() < deadline, f"no sampling step within 120 s: {server.tail()}"
        time.sleep(0.2)
    assert server.get("/queue")["queue_running"], "the prompt ended before Cancel"
    started = time.monotonic()
    server.post("/interrupt", {})
    entry = server.wait(prompt_id, timeout=120)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    assert time.monotonic() - started < 60


def test_second_run_reuses_loaded_models(server):
    prompt = fast(prompts_of("examples")["pixart_sigma_1024"], "test_reuse")
    server.run(prompt, timeout=300)
    loads = server.log().count("PixArt DiT loaded")
    prompt = fast(prompts_of("examples")["pixart_sigma_1024"], "test_reuse", seed=1234)
    entry = server.run(prompt, timeout=300)
    cached = {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}
    loaders = set(nodes_of(prompt, "PixArtSigmaDiTLoader") + nodes_of(prompt, "PixArtSigmaT5Loader"))
    assert loaders <= cached, (loaders, cached)
    assert server.log().count("PixArt DiT loaded") == loads


@pytest.mark.parametrize(
    ("node_type", "change", "expected"),
    [
        ("PixArtSigmaSampler", {"cfg": math.nan}, "PixArt Sigma Sampler: cfg must be a finite number, got nan"),
        ("PixArtSigmaSampler", {"denoise": math.inf}, "PixArt Sigma Sampler: denoise must be a finite number"),
        ("PixArtSigmaSampler", {"cfg": 150.0}, "cfg must be between 0.0 and 100.0, got 150.0"),
        ("PixArtSigmaSampler", {"steps": 0}, "Value 0 smaller than min of 1"),  # ComfyUI's own check still runs
        ("PixArtSigmaDiTLoader", {"kv_compress": "avgpool", "kv_layers": "14-x"}, "kv_layers: KV layers '14-x'"),
        ("PixArtSigmaDiTLoader", {"kv_factor": 9}, "Value 9 bigger than max of 8"),
    ],
    ids=["cfg-nan", "denoise-inf", "cfg-range", "steps-comfy-check", "kv-layers", "kv-factor-comfy-check"],
)
def test_bad_inputs_are_refused_before_the_prompt_runs(server, node_type, change, expected):
    """validate_inputs reports on the node; ComfyUI keeps its own range checks of the inputs it does not declare."""
    prompt = fast(prompts_of("v0_1")["pixart_sigma_1024"], "test_refused")
    (node_id,) = nodes_of(prompt, node_type)
    prompt[node_id]["inputs"].update(change)
    with pytest.raises(PromptRejected) as rejected:  # nothing was queued
        server.queue(prompt)
    text = json.dumps(rejected.value.answer)  # ComfyUI's reply: the errors by node id
    assert expected in text and f'"{node_id}"' in text, text


def test_sizes_that_cannot_fit_are_refused_before_allocating(server):
    """A 16384 x 16384 px batch through PixArt Sigma Resolution (its images alone exceed any RAM) and an 8-image
    16384 x 16384 latent into PixArt Sigma Sampler (sampling needs hundreds of GiB): each a short message with the
    numbers and a way out, and the server keeps running."""
    prompt = fast(prompts_of("v0_1")["pixart_sigma_1024"], "test_huge")
    prompt["5"]["inputs"].update(aspect_ratio="custom (width x height, snapped)", width=16384, height=16384)
    prompt["5"]["inputs"]["batch_size"] = 4096
    message = failure(server, prompt)
    assert "PixArt Sigma Resolution: 4096 x 16384x16384 px needs" in message and "smaller batch_size" in message
    prompt = fast(prompts_of("v0_1")["pixart_sigma_stock_ksampler"], "test_huge")
    (sampler_id,) = nodes_of(prompt, "KSampler")
    (latent_id,) = nodes_of(prompt, "EmptyLatentImage")
    prompt[sampler_id]["class_type"] = "PixArtSigmaSampler"
    prompt[latent_id]["inputs"].update(width=16384, height=16384, batch_size=8)
    message = failure(server, prompt)
    assert "PixArt Sigma: sampling 8 x 16384x16384 px needs at least" in message, message
    assert "KV compression" in message and len(message) < 600, message
    assert server.get("/system_stats")
