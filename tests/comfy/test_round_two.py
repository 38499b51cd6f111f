"""Issue 20's node-side classes in the session's ComfyUI (marker ``comfy``), on both trees:

- class 3: a huge size or batch through the stock EmptyLatentImage + KSampler, SamplerCustomAdvanced and PixArt Sigma
  Sampler is refused by the MODEL before sampling allocates (our SizeError, the numbers, a way out; this process's
  peak RSS grows by little more than the latent itself); the free memory counted as ComfyUI counts it;
- class 7: a MODEL whose ``optimized_attention_override`` is set routes every attention through it (CPU too), a
  clone without it does not;
- class 4: a Hugging Face cache layout of links (snapshots -> blobs) loads for the DiT, LoRA and T5 loader nodes;
- class 8: PixArt Sigma Sampler with its defaults (20 steps, CFG 4.5, dpmpp_2m, pixart_dpm_solver) gives diffusers'
  PixArtSigmaPipeline latent (recorded by the plain suite: tests/sampler_reference.py) to <= 1e-5, fp32; the
  scheduler's sigmas are the model's at the reference's integer timesteps; the Few-Step Schedule refuses a timestep
  outside the MODEL's own schedule.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import sampler_reference as case
import torch
from node_calls import add_model_folder, assert_close, call, node_result, outputs

pytestmark = pytest.mark.comfy
GIB = 1 << 30
SIDE = 16384  # EmptyLatentImage's largest side


def conditioning(tokens: int, width: int = 4096, seed: int = 0) -> list:
    """A CONDITIONING as PixArt Sigma Text Encode makes it: the real tokens and an all-ones attention mask."""
    states = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed))
    return [[states, {"attention_mask": torch.ones(1, tokens)}]]


@pytest.fixture(scope="module")
def dit(comfyui, models):
    """The session's tiny 1152-wide DiT through PixArt Sigma DiT Loader (fp32 on CPU)."""
    loader = comfyui.module("nodes.dit").PixArtSigmaDiTLoader
    return node_result(loader.execute("PixArt-Sigma-XL-2-1024-MS.pth", "auto", "fp32", "off", 2, "auto"))


# --- class 3: sizes that cannot fit, refused by the MODEL in every sampler ----------------------------------------


def peak_rss() -> int:
    """This process's peak resident set (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def huge_batch(comfyui, dit, side: int) -> int:
    """The smallest batch of side x side px whose one model call needs twice the free memory (the MODEL's own
    lower bound, nodes/dit/memory.py call_memory)."""
    import comfy.model_management as mm

    memory = comfyui.module("nodes.dit.memory")
    free = mm.get_free_memory(dit.load_device)
    batch = next(
        b
        for b in range(1, 4097)
        if memory.call_memory(dit.model, (b, 4, side // 8, side // 8), dit.load_device).total > 2 * free
    )
    assert batch * 4 * (side // 8) ** 2 * 4 < GIB, f"batch {batch}: its latent alone would be over 1 GiB"
    return batch


def stock_ksampler(model, latent):
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    return call(comfy_nodes.KSampler, model=model, seed=1, steps=20, cfg=4.5, sampler_name="dpmpp_2m",
                scheduler="normal", positive=conditioning(5), negative=conditioning(3, seed=1),
                latent_image=latent, denoise=1.0)  # fmt: skip


def sampler_custom_advanced(model, latent):
    import comfy_extras.nodes_custom_sampler as custom

    (noise,) = call(custom.RandomNoise, noise_seed=1)
    guider = node_result(
        call(custom.CFGGuider, model=model, positive=conditioning(5), negative=conditioning(3, seed=1), cfg=4.5)
    )
    (sampler,) = call(custom.KSamplerSelect, sampler_name="dpmpp_2m")
    (sigmas,) = call(custom.BasicScheduler, model=model, scheduler="pixart_dpm_solver", steps=20, denoise=1.0)
    return call(custom.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                latent_image=latent)  # fmt: skip


def pixart_sampler(comfyui):
    node = comfyui.module("nodes.sampler").PixArtSigmaSampler

    def run(model, latent):
        return outputs(node.execute(model, conditioning(5), conditioning(3, seed=1), latent, 1, 20, 4.5, "dpmpp_2m",
                                    "pixart_dpm_solver", 1.0))  # fmt: skip

    return run


@pytest.mark.parametrize("sampler", ["KSampler", "SamplerCustomAdvanced", "PixArtSigmaSampler"])
@pytest.mark.parametrize("huge", ["size", "batch"])
def test_sizes_that_cannot_fit_are_refused_by_the_model_before_allocating(comfyui, dit, sampler, huge):
    """EmptyLatentImage at 16384 x 16384 px (the smallest batch that cannot fit), or at 1024 x 1024 px with the
    smallest batch that cannot fit: refused in the sampler with SizeError, the numbers and a way out; this process's
    peak RSS grows by under 1 GiB plus three latents (the latent, its noise, the sampler's copy)."""
    import nodes as comfy_nodes

    side = SIDE if huge == "size" else 1024
    batch = huge_batch(comfyui, dit, side)
    run = {"KSampler": stock_ksampler, "SamplerCustomAdvanced": sampler_custom_advanced}.get(sampler)
    run = run or pixart_sampler(comfyui)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
    before = peak_rss()
    (latent,) = call(comfy_nodes.EmptyLatentImage, width=side, height=side, batch_size=batch)
    with pytest.raises(comfyui.module("pixart.errors").SizeError) as refused:
        run(dit, latent)
    grown = peak_rss() - before
    text = str(refused.value)
    print(text)
    assert isinstance(refused.value, MemoryError)
    assert text.startswith(f"PixArt Sigma: sampling {batch} x {side}x{side} px needs at least "), text
    assert "GiB are free on cpu" in text and "use a smaller size or batch_size" in text and "KV compression" in text
    assert len(text) < 600, text
    latent_bytes = latent["samples"].numel() * 4
    assert grown < GIB + 3 * latent_bytes, f"peak RSS grew by {grown / GIB:.2f} GiB"


def test_the_numbers_and_the_free_memory_comfyui_counts(comfyui, dit, monkeypatch):
    """4 x 4096 x 4096 px with 2 GiB free (PixArt Sigma Sampler's former check, now the MODEL's): one model call
    holds the batch once (ComfyUI splits prompt and negative when memory is short). On a GPU the weights of models
    ComfyUI may unload count as free, and with dynamic VRAM (0.33) what its allocator can reclaim, without counting
    a dynamic model twice."""
    import comfy.model_management as mm

    memory = comfyui.module("nodes.dit.memory")
    monkeypatch.setattr(mm, "get_free_memory", lambda *args, **kwargs: 2 * GIB)
    with pytest.raises(comfyui.module("pixart.errors").SizeError) as refused:
        memory.check_sampling_memory(dit, (4, 4, 512, 512))
    text = str(refused.value)
    assert "sampling 4 x 4096x4096 px needs at least" in text and "(4 x 65536 tokens:" in text, text
    assert "2.0 GiB are free on cpu" in text, text
    memory.check_sampling_memory(dit, (1, 4, 32, 32))  # a small latent passes

    class Loaded:  # what mm.current_loaded_models holds: a LoadedModel's device, model and loaded weights
        def __init__(self, device, size, dynamic):
            self.device, self.size = device, size
            self.model = type("Patcher", (), {"is_dynamic": lambda _: dynamic})()

        def model_loaded_memory(self):
            return self.size

    gpu = torch.device("cuda", 0)
    loaded = [Loaded(gpu, 3 * GIB, False), Loaded(gpu, 5 * GIB, True), Loaded(torch.device("cpu"), 7 * GIB, False)]
    monkeypatch.setattr(mm, "current_loaded_models", loaded)
    free, where = memory.free_for_sampling(dit, gpu)
    assert (free, "8.0 GiB of models ComfyUI can unload" in where) == (10 * GIB, True), (free, where)
    if memory.dynamic_vram is None:
        return  # 0.3.64: no dynamic VRAM
    import comfy_aimdo.model_vbar

    monkeypatch.setattr(memory.dynamic_vram, "aimdo_enabled", True)
    monkeypatch.setattr(comfy_aimdo.model_vbar, "vbars_analyze", lambda device=None: 6 * GIB)
    free, where = memory.free_for_sampling(dit, gpu)
    assert free == (2 + 6 + 3) * GIB, free / GIB  # the dynamic model's 5 GiB are in the allocator's 6


def test_memory_required_is_the_model_estimate(comfyui, dit):
    """ComfyUI's load and batching decisions read the MODEL's own estimate."""
    memory = comfyui.module("nodes.dit.memory")
    shape = [2, 4, 64, 64]
    assert dit.model.memory_required(shape) == memory.call_memory(dit.model, shape, dit.load_device).total > 0


# --- class 7: the per-model attention override ---------------------------------------------------------------------


def test_attention_override_routes_every_attention(comfyui, dit):
    """An override in the MODEL's transformer options (as nodes that pick sage / flash for one model set it) serves
    the self- and cross-attention of every block in every model call, on CPU too; a clone without it keeps ComfyUI's
    CPU path and the override sees nothing from it; the latents agree."""
    import comfy.sample

    calls, model_calls = [], []

    def override(func, *args, **kwargs):
        calls.append(kwargs["transformer_options"] is not None)
        return func(*args, **kwargs)

    def count_calls(apply, args):
        model_calls.append(1)
        return apply(args["input"], args["timestep"], **args["c"])

    routed = dit.clone()
    routed.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    routed.set_model_unet_function_wrapper(count_calls)
    plain = dit.clone()
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))

    def sample(model):
        latent = torch.zeros_like(noise)
        return comfy.sample.sample(model, noise, 2, 4.5, "euler", "normal", conditioning(5), conditioning(3, seed=1),
                                   latent, seed=0, disable_pbar=True)  # fmt: skip

    got = sample(routed)
    depth = len(dit.model.diffusion_model.blocks)
    assert model_calls and all(calls)
    assert len(calls) >= 2 * depth * len(model_calls), (len(calls), depth, len(model_calls))
    seen = len(calls)
    want = sample(plain)
    assert len(calls) == seen  # the clone without the override never reached it
    assert_close(got, want, "attention through the override vs the plain clone", tol=1e-4)


# --- class 4: a Hugging Face cache layout of links ------------------------------------------------------------------


def hub_link(folder: Path, name: str, write) -> str:
    """``folder/hub/models--x/snapshots/<rev>/name -> ../../blobs/<hash>``, the blob written by ``write(path)``;
    the name as ComfyUI lists it."""
    repo = folder / "hub" / "models--pixart--tiny"
    blob = repo / "blobs" / hashlib.sha256(name.encode()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    write(blob)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True, exist_ok=True)
    os.symlink(Path("..", "..", "blobs", blob.name), snapshot / name)
    return (snapshot / name).relative_to(folder).as_posix()


def test_hugging_face_cache_links_load_for_dit_lora_and_t5(comfyui, tmp_path, monkeypatch):
    """Each loader node loads the snapshot link (the listed name's format, not the extension-less blob's)."""
    from lora_fixtures import random_lora, write_kohya
    from safetensors.torch import save_file

    from scripts import tiny_weights

    weights = case.official_weights()
    kinds = {"diffusion_models": tmp_path / "dit", "loras": tmp_path / "loras", "text_encoders": tmp_path / "t5"}
    for kind, folder in kinds.items():
        folder.mkdir()
        add_model_folder(monkeypatch, kind, folder)
    dit_name = hub_link(kinds["diffusion_models"], "tiny.safetensors", lambda p: save_file(weights, str(p)))
    lora = random_lora(weights, rank=4, seed=3)
    scales = {key.removesuffix(".lora_A.weight"): 2.0 for key in lora if key.endswith(".lora_A.weight")}
    lora_name = hub_link(kinds["loras"], "style.safetensors", lambda p: write_kohya(lora, scales, p))
    t5 = tiny_weights.t5_state_dict()
    t5_name = hub_link(kinds["text_encoders"], "t5.safetensors", lambda p: save_file(t5, str(p)))
    import folder_paths

    for kind, name in (("diffusion_models", dit_name), ("loras", lora_name), ("text_encoders", t5_name)):
        assert name in folder_paths.get_filename_list(kind), (kind, name)
    dit_loader = comfyui.module("nodes.dit").PixArtSigmaDiTLoader
    model = node_result(dit_loader.execute(dit_name, "auto", "fp32", "off", 2, "auto"))
    loaded = model.model.diffusion_model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items() if k in loaded)
    lora_loader = comfyui.module("nodes.lora_loader").PixArtSigmaLoraLoader
    patched = node_result(lora_loader.execute(model, lora_name, 1.0))
    assert len(patched.patches) > len(model.patches) and len(patched.patches) >= 4 * case.CONFIG.depth
    t5_loader = comfyui.module("nodes.t5").PixArtSigmaT5Loader
    encoder = node_result(t5_loader.execute(t5_name, "comfyui bundled", "fp32", "cpu", True))
    (cond,) = node_result(comfyui.module("nodes.t5").PixArtSigmaTextEncode.execute(encoder, "a cat", "sigma"))
    assert cond[0].shape[-1] == 4096 and torch.isfinite(cond[0]).all()


def test_a_name_that_is_not_a_file_says_what_it_is(comfyui, tmp_path, monkeypatch):
    """A FIFO or a dangling link listed in a models folder: each loader node's error (its own kind) names the listed
    path and what it is, never "not found ... put it there"."""
    errors = comfyui.module("pixart.errors")
    folder = tmp_path / "models"
    folder.mkdir()
    os.mkfifo(folder / "pipe.safetensors")
    os.symlink(folder / "gone.safetensors", folder / "dangling.safetensors")
    dit_loader = comfyui.module("nodes.dit").PixArtSigmaDiTLoader
    t5_loader = comfyui.module("nodes.t5").PixArtSigmaT5Loader
    lora_loader = comfyui.module("nodes.lora_loader").PixArtSigmaLoraLoader
    runs = {
        "diffusion_models": lambda name: dit_loader.execute(name, "auto", "fp32", "off", 2, "auto"),
        "text_encoders": lambda name: t5_loader.execute(name, "comfyui bundled", "fp32", "cpu", True),
        "loras": lambda name: lora_loader.execute(None, name, 1.0),
    }
    errors_of = {"diffusion_models": errors.CheckpointError, "text_encoders": errors.T5Error, "loras": errors.LoraError}
    for kind, run in runs.items():
        add_model_folder(monkeypatch, kind, folder)
        for name, what in (
            ("pipe.safetensors", "found a FIFO (named pipe)"),
            ("dangling.safetensors", "found a dangling link to"),
        ):
            with pytest.raises(errors_of[kind]) as refused:
                run(name)
            text = str(refused.value)
            assert str(folder / name) in text and what in text and "put it there" not in text, (kind, text)


# --- class 8: the reference's integer timesteps ---------------------------------------------------------------------


def test_default_sampler_equals_the_reference_pipeline(comfyui, tmp_path):
    """PixArt Sigma Sampler with its schema defaults on the tiny case's file, the case's prompt states and seed:
    diffusers' PixArtSigmaPipeline latent (tests/test_default_sampler_reference.py records and rechecks it)."""
    import comfy.sample
    from node_info import v1_inputs
    from safetensors.torch import save_file

    recorded, fingerprint = case.recorded()
    assert case.fingerprint() == pytest.approx(fingerprint, rel=1e-12)  # this interpreter built the same case
    path = tmp_path / "tiny_case.safetensors"
    save_file(case.official_weights(), str(path))
    model = comfyui.module("nodes.dit.model").load_model(path, "auto", torch.float32)
    defaults = {name: options.get("default") for name, (_, options) in v1_inputs("PixArtSigmaSampler").items()}
    assert (defaults["steps"], defaults["cfg"], defaults["sampler_name"]) == (case.STEPS, case.CFG, "dpmpp_2m")
    assert defaults["scheduler"] == "pixart_dpm_solver" and defaults["denoise"] == 1.0
    latent = {"samples": torch.zeros(case.LATENT)}
    assert torch.equal(comfy.sample.prepare_noise(latent["samples"], case.SEED), case.noise())
    positive, negative = case.prompts()
    ones = torch.ones
    node = comfyui.module("nodes.sampler").PixArtSigmaSampler
    inputs = {k: defaults[k] for k in ("steps", "cfg", "sampler_name", "scheduler", "denoise")}
    positive, negative = [[positive, {"attention_mask": ones(1, 7)}]], [[negative, {"attention_mask": ones(1, 4)}]]
    (out,) = outputs(node.execute(model, positive, negative, latent, seed=case.SEED, **inputs))
    got = model.model.process_latent_in(out["samples"])  # a LATENT is the pipeline latent / 0.13025
    assert_close(got, recorded, "PixArt Sigma Sampler defaults vs PixArtSigmaPipeline", tol=1e-5)


def test_scheduler_gives_the_model_sigmas_at_integer_timesteps(comfyui, dit):
    """pixart_dpm_solver is in ComfyUI's scheduler list and gives the MODEL's own sigma at 999, 949, ... then 0."""
    import comfy.samplers

    from pixart.sampling import dpm_solver_schedule

    assert "pixart_dpm_solver" in comfy.samplers.KSampler.SCHEDULERS
    assert comfy.samplers.KSampler.SCHEDULERS.count("pixart_dpm_solver") == 1
    sampling = dit.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "pixart_dpm_solver", 20)
    timesteps, _ = dpm_solver_schedule(20)
    assert timesteps[:3] == [999, 949, 899]
    want = torch.cat([sampling.sigmas[timesteps].float(), torch.zeros(1)])
    torch.testing.assert_close(sigmas, want, rtol=1e-6, atol=0)  # sigma(t) interpolates in log space


def test_few_step_schedule_uses_the_model_schedule(comfyui, dit):
    """The Few-Step Schedule computes a recipe on the MODEL's own training steps: a timestep past a 500-step
    schedule is refused by name, not clamped."""
    schedule = comfyui.module("pixart.sampling").NoiseSchedule(train_steps=500)
    short = comfyui.module("nodes.dit.model").with_noise_schedule(dit, schedule)
    node = comfyui.module("nodes.schedule").PixArtSigmaFewStepSchedule
    with pytest.raises(comfyui.module("pixart.errors").ScheduleError) as refused:
        node.execute(short, "alpha-dmd-512", 0, 600)
    text = str(refused.value)
    assert "PixArt Sigma Few-Step Schedule" in text and "timestep 600 is outside the MODEL's 0..499" in text, text
    sampler, sigmas = outputs(node.execute(short, "alpha-dmd-512", 0, 400))
    want = short.get_model_object("model_sampling").sigma(torch.tensor(400.0))
    assert torch.equal(sigmas, torch.stack([want, torch.zeros(())]).float())
