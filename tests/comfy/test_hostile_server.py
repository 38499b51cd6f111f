"""Hostile inputs through a real ComfyUI server (marker ``comfy``), on tiny random weights (scripts/tiny_weights.py):

- a LoRA whose ``rank_pattern`` keys are catastrophic regular expressions (in a PEFT ``adapter_config.json`` and in
  the ``lora_adapter_metadata`` header of a ``.safetensors``) queued behind a long sampling prompt: ``/queue`` and
  ``/history`` keep answering, Cancel (``/interrupt``) ends the running sampling, and each LoRA prompt ends with the
  pack's LoraError naming the file;
- a size whose sampling cannot fit the server's free memory (as pixart/memory.py estimates it) and a batch whose
  images cannot: each refused with the numbers and a way out, and the server's peak RSS does not jump;
- a DiT file symlinked into models/diffusion_models, and one inside a symlinked folder, are listed and load.

All on the session's one server (tests/comfy/conftest.py), whose models folder gets these files first.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixart import VARIANTS
from pixart.memory import sampling_memory
from pixart.model import CPU_TOKEN_CHUNK
from scripts.comfy_server import error_message

pytestmark = pytest.mark.comfy
DIT = "PixArt-Sigma-XL-2-1024-MS.pth"
T5 = "t5xxl_fp16.safetensors"
# Catastrophic backtracking: matched the way PEFT matches rank_pattern keys (``(.*\.)?(KEY)$`` against a module name),
# the first tries 4^n ways through an n-character name (over 20 s for "blocks.0.attn." already). "(a+)+$" is the
# textbook case.
REDOS_KEYS = ["(.|.|.|.)*!", "(a+)+$"]
REDOS_LORAS = {"redos_adapter/": "adapter_config.json", "redos_metadata.safetensors": "redos_metadata.safetensors"}
ANSWER_S = 5.0  # an HTTP answer from a live server; a frozen one (the GIL held by a regex) takes minutes
LONG_STEPS = 10000  # the most PixArt Sigma Sampler takes: the long prompt only ends by Cancel
GIB = 1 << 30
OUTSIDE = "PixArt-Sigma-XL-2-1024-MS-outside.pth"  # the DiT file outside models/ that the symlinks point to


def node(kind: str, **inputs) -> dict:
    return {"class_type": kind, "inputs": inputs}


def prompt_for(
    name: str, ckpt: str = DIT, side: int = 256, batch: int = 1, steps: int = 1, lora: str | None = None
) -> dict:
    """T5 (bf16, as stored) -> two encodes; DiT (-> LoRA) -> PixArt Sigma Sampler on a PixArt Sigma Resolution latent of
    side x side px -> SaveLatent with prefix ``name``."""
    prompt = {
        "1": node("PixArtSigmaT5Loader", t5_name=T5, tokenizer="auto", dtype="bf16", device="default",
                  offload_after_encode=True),
        "2": node("PixArtSigmaTextEncode", t5=["1", 0], text="a lighthouse in a storm", model_family="sigma"),
        "3": node("PixArtSigmaTextEncode", t5=["1", 0], text="", model_family="sigma"),
        "4": node("PixArtSigmaDiTLoader", ckpt_name=ckpt, variant="auto", weight_dtype="default", kv_compress="off",
                  kv_factor=2, kv_layers="auto"),
        "5": node("PixArtSigmaResolution", base="256", aspect_ratio="custom (width x height, snapped)", width=side,
                  height=side, batch_size=batch),
        "6": node("PixArtSigmaSampler", model=["4", 0], positive=["2", 0], negative=["3", 0], latent_image=["5", 0],
                  seed=7, steps=steps, cfg=4.5, sampler_name="dpmpp_2m", scheduler="sgm_uniform", denoise=1.0),
        "7": node("SaveLatent", samples=["6", 0], filename_prefix=name),
    }  # fmt: skip
    if lora is not None:
        prompt["10"] = node("PixArtSigmaLoraLoader", model=["4", 0], lora_name=lora, strength=1.0)
        prompt["6"]["inputs"]["model"] = ["10", 0]
    return prompt


def write_redos_loras(loras: Path) -> None:
    """A PEFT folder and a diffusers-style .safetensors, each a valid rank-4 LoRA of one projection whose scaling
    settings carry REDOS_KEYS as ``rank_pattern`` keys."""
    g = torch.Generator().manual_seed(0)
    module = "transformer_blocks.0.attn1.to_q"
    down, up = torch.randn(4, 1152, generator=g) * 0.05, torch.randn(1152, 4, generator=g) * 0.05
    settings = {"r": 4, "lora_alpha": 4, "rank_pattern": dict.fromkeys(REDOS_KEYS, 4)}
    folder = loras / "redos_adapter"
    folder.mkdir(parents=True)
    weights = {f"base_model.model.{module}.lora_A.weight": down, f"base_model.model.{module}.lora_B.weight": up}
    save_file(weights, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **settings}))
    metadata = {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in settings.items()})}
    weights = {f"transformer.{module}.lora_A.weight": down, f"transformer.{module}.lora_B.weight": up}
    save_file(weights, str(loras / "redos_metadata.safetensors"), metadata=metadata)


@pytest.fixture(scope="module")
def host(server, models, tmp_path_factory):
    """The session's server, its models folder now also holding the ReDoS LoRAs, and the DiT's file also outside
    models/ (a hard link), symlinked in as a file (``linked-file.pth``) and through a symlinked folder
    (``linked-folder/<OUTSIDE>``)."""
    write_redos_loras(models / "loras")
    outside = tmp_path_factory.mktemp("outside-models")
    dits = models / "diffusion_models"
    os.link(dits / DIT, outside / OUTSIDE)
    (dits / "linked-file.pth").symlink_to(outside / OUTSIDE)
    (dits / "linked-folder").symlink_to(outside, target_is_directory=True)
    return server


# --- helpers ----------------------------------------------------------------------------------------------------


def answer(server, path: str):
    """GET ``path``, failing the test when the server does not answer within ANSWER_S."""
    started = time.monotonic()
    try:
        body = server.get(path, timeout=ANSWER_S)
    except (TimeoutError, urllib.error.URLError) as e:
        pytest.fail(f"{path} did not answer within {ANSWER_S:.0f} s: {e}")
    assert time.monotonic() - started < ANSWER_S, path
    return body


def finished(server, prompt_id: str) -> dict | None:
    """The /history entry of ``prompt_id`` once it ended (success, error or interrupted), else None."""
    entry = answer(server, f"/history/{prompt_id}").get(prompt_id)
    return entry if entry and entry.get("status", {}).get("completed") is not None else None


def execution_error(entry: dict) -> dict:
    (error,) = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    return error


def sampled_steps(server) -> int:
    """The highest ``k/LONG_STEPS`` count in the server's progress bars so far."""
    return max((int(k) for k in re.findall(rf"(\d+)/{LONG_STEPS} \[", server.log())), default=0)


def peak_rss(pid: int) -> int:
    """VmHWM (peak resident memory) of a process, in bytes."""
    (line,) = [x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def reset_peak_rss(pid: int) -> None:
    """Set a process's VmHWM to its current RSS (Linux ``clear_refs`` 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# --- a ReDoS LoRA in the queue, Cancel ----------------------------------------------------------------------------


def test_redos_lora_does_not_freeze_the_server_and_cancel_ends_sampling(host):
    long_id = host.queue(prompt_for("long", steps=LONG_STEPS))
    deadline = time.monotonic() + 120
    while sampled_steps(host) < 2:  # models loaded, sampling under way
        entry = finished(host, long_id)
        assert entry is None, error_message(entry)
        assert time.monotonic() < deadline, host.tail()
        time.sleep(0.25)
    hostile = {name: host.queue(prompt_for("redos", lora=name)) for name in REDOS_LORAS}
    queue = answer(host, "/queue")
    assert [item[1] for item in queue["queue_running"]] == [long_id], queue["queue_running"]
    assert set(hostile.values()) <= {item[1] for item in queue["queue_pending"]}
    assert isinstance(answer(host, "/history?max_items=8"), dict)

    host.post("/interrupt", {}, timeout=ANSWER_S)  # Cancel: ComfyUI's global interrupt
    cancelled_at, ended, entries = time.monotonic(), {}, {}
    deadline = cancelled_at + 60
    while len(entries) < 1 + len(hostile):
        assert time.monotonic() < deadline, f"still running after 60 s: {host.tail()}"
        answer(host, "/queue")
        for prompt_id in [long_id, *hostile.values()]:
            if prompt_id not in entries and (entry := finished(host, prompt_id)) is not None:
                entries[prompt_id], ended[prompt_id] = entry, time.monotonic() - cancelled_at
        time.sleep(0.25)

    kinds = [kind for kind, _ in entries[long_id]["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_success" not in kinds, kinds
    assert ended[long_id] < 30, f"Cancel took {ended[long_id]:.0f} s to end the sampling"
    assert sampled_steps(host) < LONG_STEPS
    for name, prompt_id in hostile.items():
        error = execution_error(entries[prompt_id])
        message = error["exception_message"]
        assert error["exception_type"].endswith("LoraError"), error["exception_type"]
        assert error["node_type"] == "PixArtSigmaLoraLoader", error["node_type"]
        assert REDOS_LORAS[name] in message and "regular-expression patterns are not supported" in message, message
        assert len(message) < 1000, message


# --- sizes that cannot fit ----------------------------------------------------------------------------------------


def test_sizes_that_cannot_fit_are_refused_before_allocating(comfyui, host):
    """At 16384 x 16384 px: the smallest batch whose sampling (lower bound of pixart/memory.py, 16-bit activations)
    needs twice the server's free memory while its latent and images take under half of it, through PixArt Sigma
    Sampler; and the smallest batch whose images alone need twice the free memory, through PixArt Sigma Resolution.
    Each ends with the numbers and a way out, and the server's peak RSS grows by under 1 GiB."""
    memory, side, pid = comfyui.module("nodes.memory"), 16384, host.process.pid
    free = answer(host, "/system_stats")["system"]["ram_free"]
    config = VARIANTS["sigma-1024"]

    def sampling_need(batch: int) -> int:
        shape = (batch, 4, side // 8, side // 8)
        return sampling_memory(config, shape, 1.0, 2, None, CPU_TOKEN_CHUNK).total  # one model call, batch once

    sampler_batch = next(b for b in range(1, 4097) if sampling_need(b) > 2 * free)
    if memory.image_bytes(sampler_batch, side, side) > free / 2:
        pytest.skip(f"{free / GIB:.0f} GiB free: no 16384 px batch passes PixArt Sigma Resolution yet fails sampling")
    resolution_batch = next(b for b in range(1, 4097) if memory.image_bytes(b, side, side) > 2 * free)
    size = f"{side}x{side} px"
    cases = [
        (sampler_batch, "PixArtSigmaSampler", f"PixArt Sigma: sampling {sampler_batch} x {size} needs at least",
         "use a smaller size or batch_size", "SizeError"),
        (resolution_batch, "PixArtSigmaResolution", f"PixArt Sigma Resolution: {resolution_batch} x {size} needs",
         "use a smaller batch_size or size", "MemoryError"),
    ]  # fmt: skip
    measured = Path(f"/proc/{pid}/clear_refs").exists()  # Linux; elsewhere only the messages are checked
    for batch, node_type, numbers, way_out, error_type in cases:
        if measured:
            reset_peak_rss(pid)
            before = peak_rss(pid)
        entry = host.wait(host.queue(prompt_for("huge", side=side, batch=batch)), timeout=120)
        error = execution_error(entry)
        message = error["exception_message"]
        assert error["exception_type"].endswith(error_type) and error["node_type"] == node_type, error
        assert numbers in message and "GiB are free" in message and way_out in message, message
        assert len(message) < 600, message
        if measured:
            grown = peak_rss(pid) - before
            assert grown < GIB, f"peak RSS grew by {grown / GIB:.1f} GiB while refusing {batch} x {side} px"
    assert answer(host, "/system_stats")["system"]["ram_total"] > 0  # the server lives on


# --- symlinked model files ----------------------------------------------------------------------------------------


def test_symlinked_dit_files_are_listed_and_load(host):
    """ComfyUI lists the DiT symlinked in as a file and the one inside a symlinked folder; PixArt Sigma DiT Loader
    loads each through its link and samples what the plain file gives."""
    info = answer(host, "/object_info/PixArtSigmaDiTLoader")["PixArtSigmaDiTLoader"]
    spec = info["input"]["required"]["ckpt_name"]
    listed = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    names = {"plain": DIT, "file": "linked-file.pth", "folder": f"linked-folder/{OUTSIDE}"}
    assert set(names.values()) <= set(listed), sorted(listed)
    latents = {}
    for tag, ckpt in names.items():
        entry = host.run(prompt_for(f"linked_{tag}", ckpt=ckpt), timeout=120)
        (saved,) = [x for out in entry["outputs"].values() for x in out.get("latents", [])]
        latents[tag] = load_file(str(host.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    assert torch.isfinite(latents["plain"]).all() and latents["plain"].abs().sum() > 0
    assert torch.equal(latents["file"], latents["plain"]) and torch.equal(latents["folder"], latents["plain"])
