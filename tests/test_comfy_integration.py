"""The node pack inside a real ComfyUI (marker ``comfy``): loading, /object_info, the example workflows (those
shipped now and the four shipped with 0.1, tests/fixtures/workflows_v0_1/), interop with ComfyUI's own PixArt nodes,
errors, checks before a prompt runs, sizes refused before allocation, symlinked models, interrupts and model reuse.
Tiny random weights (scripts/tiny_weights.py).

Every run's sampled latent (SaveLatent added to the graph) is compared with ``pixart`` plus an independent
DPM-Solver++(2M) over ComfyUI's schedule; the decoded images are only checked for their size (the VAE is random).
Run: ``COMFYUI_PATH=/path/to/ComfyUI python -m pytest -m comfy`` (see /work/comfy/README.md for the interpreter).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from comfy_host import (
    bundled_tokenizer,
    error_message,
    example_prompts,
    find_comfy,
    nodes_of,
    start_server,
    tiny_weights,
)
from safetensors.torch import load_file

import pixart
from pixart.text_encoder import load_t5

pytestmark = pytest.mark.comfy
COMFY, WHY = find_comfy()
OUR_NODES = {"PixArtSigmaT5Loader", "PixArtSigmaTextEncode", "PixArtSigmaDiTLoader", "PixArtSigmaSampler",
             "PixArtSigmaResolution", "PixArtSigmaLoraLoader"}  # fmt: skip
V0_1 = Path(__file__).resolve().parent / "fixtures" / "workflows_v0_1"
# The final latents of the 0.1 workflows (``fast`` settings, tiny weights) as the pre-V3 nodes (commit 1eff523) gave
# them in ComfyUI 0.33.0 and 0.3.64 (identical in both): shape, sum, sum of |x|, first values.
V0_1_LATENTS = json.loads((V0_1.parent / "latents_v0_1_before_v3.json").read_text())
STEPS = 3
DIT = "PixArt-Sigma-XL-2-1024-MS.pth"
T5 = "t5xxl_fp16.safetensors"
LATENT_SCALE = {"sigma": 0.13025, "alpha": 0.18215}


def fast(prompt: dict, name: str, steps: int = STEPS, seed: int | None = None) -> dict:
    """A copy of an example prompt that runs in seconds on a CPU (256 px, few steps, fp32 T5) and saves its latent."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "PixArtSigmaResolution":
            inputs["base"] = "256"
        elif node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = 256
        elif node["class_type"] == "PixArtSigmaT5Loader":
            inputs["dtype"] = "fp32"
        elif node["class_type"] in ("PixArtSigmaSampler", "KSampler"):
            inputs["steps"] = steps
            inputs["seed"] = inputs["seed"] if seed is None else seed
            sampler_id = next(k for k, v in prompt.items() if v is node)
    prompt["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": name}}
    return prompt


def v0_1_prompts() -> dict[str, dict]:
    """{name: API prompt} of the four example workflows as shipped with 0.1."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((V0_1 / "api").glob("*.json"))}


# The examples one PixArtSigmaSampler / KSampler samples; the recipe examples (SamplerCustomAdvanced, two
# KSamplerAdvanced) run in tests/test_comfy_schedules.py, the ControlNet example in tests/test_comfy_controlnet.py.
EXAMPLE_CASES = [
    ("examples", n)
    for n, p in sorted(example_prompts().items())
    if nodes_of(p, "PixArtSigmaSampler") + nodes_of(p, "KSampler") and not nodes_of(p, "PixArtSigmaControlNetLoader")
] + [("v0_1", n) for n in sorted(v0_1_prompts())]
# Tiny models for these (a ControlNet workflow would give its DiT files 2 blocks; the recorded 0.1 latents have 1).
TINY_PROMPTS = [p for p in example_prompts().values() if not nodes_of(p, "PixArtSigmaControlNetLoader")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if COMFY is None:
        pytest.skip(WHY)
    base = tmp_path_factory.mktemp("comfy-base")
    models = base / "models"
    tiny_weights.write_tiny_models(models, [*TINY_PROMPTS, *v0_1_prompts().values(), interop_prompt()])
    # The DiT every example loads lies outside models/ and is symlinked into it, as users keep large files.
    outside = tmp_path_factory.mktemp("outside-models")
    os.replace(models / "diffusion_models" / DIT, outside / DIT)
    (models / "diffusion_models" / DIT).symlink_to(outside / DIT)
    tiny_weights.write(models / "diffusion_models" / "not_a_pixart.safetensors", tiny_weights.vae_state_dict(0.13))
    tiny_weights.write(models / "text_encoders" / "t5_narrow.safetensors", tiny_weights.t5_state_dict(d_model=64))
    srv = start_server(COMFY, base)
    yield srv
    srv.stop()


def saved_latent(server, entry: dict) -> torch.Tensor:
    (info,) = [x for out in entry["outputs"].values() for x in out.get("latents", [])]
    return load_file(str(server.base / "output" / info["subfolder"] / info["filename"]))["latent_tensor"]


# --- an independent reference: pixart + ComfyUI's discrete EPS schedule + DPM-Solver++(2M) -----------------------


def log_sigmas() -> torch.Tensor:
    """log sigma_t of the 1000 training steps: linear betas 1e-4..0.02 (ComfyUI's "sqrt_linear")."""
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float().log()


def sigma_at(t: float) -> torch.Tensor:
    table, t = log_sigmas(), min(max(t, 0.0), 999.0)
    low, w = math.floor(t), t - math.floor(t)
    return ((1 - w) * table[low] + w * table[math.ceil(t)]).exp()


def timestep_at(sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of ``sigma_at``: interpolate log sigma between the two nearest training steps."""
    table, log_sigma = log_sigmas(), sigma.log()
    low = int((log_sigma - table >= 0).cumsum(0).argmax().clamp(max=len(table) - 2))
    w = ((table[low] - log_sigma) / (table[low] - table[low + 1])).clamp(0, 1)
    return (1 - w) * low + w * (low + 1)


def sgm_uniform(steps: int) -> torch.Tensor:
    start, end = timestep_at(log_sigmas()[-1].exp()), timestep_at(log_sigmas()[0].exp())
    return torch.tensor([float(sigma_at(float(t))) for t in torch.linspace(start, end, steps + 1)[:-1]] + [0.0])


def reference_latent(models, prompt: dict, shape: tuple[int, ...], family: str) -> torch.Tensor:
    """What the prompt's DiT, T5, seed, steps and CFG give through ``pixart`` and our own sampler."""
    (dit_id,) = nodes_of(prompt, "PixArtSigmaDiTLoader")
    (sampler_id,) = nodes_of(prompt, "PixArtSigmaSampler") + nodes_of(prompt, "KSampler")
    dit, sampling = prompt[dit_id]["inputs"], prompt[sampler_id]["inputs"]
    kv = None
    if dit["kv_compress"] != "off":
        kv = pixart.KVCompress(dit["kv_compress"], dit["kv_factor"], None)
    model = pixart.load_dit(models / "diffusion_models" / dit["ckpt_name"], dit["variant"], torch.float32, kv)
    t5 = load_t5(models / "text_encoders" / T5, dtype=torch.float32, fallback_tokenizer_dirs=[bundled_tokenizer(COMFY)])
    texts = [prompt[sampling[k][0]]["inputs"]["text"] for k in ("negative", "positive")]
    caption, mask = t5.encode(texts, max_length=300 if family == "sigma" else 120)
    sigmas, cfg = sgm_uniform(sampling["steps"]), sampling["cfg"]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sampling["seed"])) * (1 + sigmas[0] ** 2) ** 0.5
    old = None
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        with torch.no_grad():
            eps = model(torch.cat([x, x]) / (sigma**2 + 1) ** 0.5, timestep_at(sigma).expand(2), caption, mask)[:, :4]
        uncond, cond = (x - eps * sigma).chunk(2)
        denoised = uncond + cfg * (cond - uncond)
        t, t_next = -sigma.log(), -sigmas[i + 1].log()
        h = t_next - t
        if old is not None and sigmas[i + 1] > 0:
            r = (t + sigmas[i - 1].log()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        else:
            denoised_d = denoised
        x = (sigmas[i + 1] / sigma) * x - torch.expm1(-h) * denoised_d if sigmas[i + 1] > 0 else denoised_d
        old = denoised
    return x / LATENT_SCALE[family]


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = 2e-3) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"{what}: rel err {err:.2e}, max {want.abs().max():.3f}")
    assert err < tol, f"{what}: max relative difference {err:.2e} (tolerance {tol:.0e})"


# --- the pack in ComfyUI --------------------------------------------------------------------------------------------


def test_pack_imports_through_comfyui_loader(server):
    text = server.log()
    assert "IMPORT FAILED" not in text, text[-3000:]
    assert any("comfyui-pixart-sigma" in line and "seconds" in line for line in text.splitlines()), text[-3000:]


def test_object_info_lists_the_nodes(server):
    info = server.get("/object_info")
    assert set(info) >= OUR_NODES, sorted(OUR_NODES - set(info))
    for name in OUR_NODES:
        node = info[name]
        assert "PixArt Sigma" in node["display_name"] and node["category"].startswith("PixArt-Sigma")
        assert "PixArt Sigma" in node["description"]
        for input_name, spec in node["input"]["required"].items():
            assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(node["output_tooltips"]), name
        json.dumps(node).encode("cp1252")  # everything a user sees encodes on Windows consoles
    sampler = info["PixArtSigmaSampler"]["input"]["required"]
    assert "dpmpp_2m" in choices(sampler["sampler_name"]) and sampler["seed"][1]["control_after_generate"]
    assert DIT in choices(info["PixArtSigmaDiTLoader"]["input"]["required"]["ckpt_name"])
    assert info["PixArtSigmaResolution"]["output_name"] == ["latent", "width", "height", "note"]


def choices(spec) -> list:
    """The choices of a combo input in /object_info: V1 lists them first, V3 as ("COMBO", {"options": [...]})."""
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def test_example_workflows_are_templates(server):
    templates = server.get("/api/workflow_templates")
    assert sorted(templates.get("comfyui-pixart-sigma", [])) == sorted(example_prompts())


@pytest.mark.parametrize(("source", "name"), EXAMPLE_CASES)
def test_example_workflow_runs_and_matches_pixart(server, source, name):
    prompts = example_prompts() if source == "examples" else v0_1_prompts()
    prompt = fast(prompts[name], f"test_{source}_{name}")
    entry = server.run(prompt, timeout=300)
    latent = saved_latent(server, entry)
    if source == "v0_1":  # the V3 nodes give what the pre-V3 nodes gave
        before = V0_1_LATENTS[name]
        assert list(latent.shape) == before["shape"]
        got = [float(latent.double().sum()), float(latent.double().abs().sum()), *map(float, latent.flatten()[:8])]
        want = [before["sum"], before["abs_sum"], *before["first"]]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-3 * before["max_abs"]), name
    family = "alpha" if "alpha" in name else "sigma"
    want = reference_latent(server.base / "models", prompt, tuple(latent.shape), family)
    assert_close(latent, want, name)
    from PIL import Image

    ((_, png),) = server.images(entry)
    assert Image.open(io.BytesIO(png)).size == (8 * latent.shape[3], 8 * latent.shape[2])


# --- interop with ComfyUI's own PixArt support ----------------------------------------------------------------------

PROMPT = "a lighthouse on a cliff over a stormy sea"
CLIP_T5 = "t5xxl_comfy_stub.pth"


def node(kind: str, **inputs) -> dict:
    """One API-format node."""
    return {"class_type": kind, "inputs": inputs}


def interop_prompt(seed: int = 7) -> dict:
    """One 512x512 latent (ComfyUI's built-in PixArt needs >= 64 latent pixels a side) sampled four ways:
    {ComfyUI's built-in PixArt (UNETLoader), our DiT} x {our conditioning, CLIPLoader(pixart) + CLIPTextEncode}."""
    prompt = {
        "1": node("PixArtSigmaT5Loader", t5_name=T5, tokenizer="auto", dtype="fp32", device="default",
                  offload_after_encode=True),
        "2": node("PixArtSigmaTextEncode", t5=["1", 0], text=PROMPT, model_family="sigma"),
        "3": node("PixArtSigmaTextEncode", t5=["1", 0], text="", model_family="sigma"),
        "4": node("PixArtSigmaDiTLoader", ckpt_name=DIT, variant="auto", weight_dtype="default", kv_compress="off",
                  kv_factor=2, kv_layers="auto"),
        "5": node("UNETLoader", unet_name=DIT, weight_dtype="default"),
        "6": node("CLIPLoader", clip_name=CLIP_T5, type="pixart"),
        "7": node("CLIPTextEncode", clip=["6", 0], text=PROMPT),
        "8": node("CLIPTextEncode", clip=["6", 0], text=""),
        "9": node("EmptyLatentImage", width=512, height=512, batch_size=1),
    }  # fmt: skip
    branches = {"builtin_ours": ("5", "2", "3"), "ours_ours": ("4", "2", "3"),
                "ours_clip": ("4", "7", "8"), "builtin_clip": ("5", "7", "8")}  # fmt: skip
    for i, (name, (model, pos, neg)) in enumerate(branches.items()):
        prompt[f"{20 + i}"] = node("KSampler", model=[model, 0], positive=[pos, 0], negative=[neg, 0],
                                   latent_image=["9", 0], seed=seed, steps=STEPS, cfg=4.5, sampler_name="dpmpp_2m",
                                   scheduler="sgm_uniform", denoise=1.0)  # fmt: skip
        prompt[f"{30 + i}"] = node("SaveLatent", samples=[f"{20 + i}", 0], filename_prefix=f"interop_{name}")
    return prompt


def test_interop_with_comfyui_builtin_pixart(server):
    entry = server.run(interop_prompt(), timeout=600)
    latents = {}
    for output in entry["outputs"].values():
        (info,) = output["latents"]
        path = server.base / "output" / info["subfolder"] / info["filename"]
        latents[info["filename"].split("interop_")[1].rsplit("_", 2)[0]] = load_file(str(path))["latent_tensor"]
    assert set(latents) == {"builtin_ours", "ours_ours", "ours_clip", "builtin_clip"}
    # Our conditioning holds only the real tokens, so the built-in model (which ignores masks) sees the reference.
    assert_close(latents["ours_ours"], latents["builtin_ours"], "our DiT vs ComfyUI's built-in, our conditioning")
    # CLIPLoader(pixart) conditioning has no mask: our DiT attends to every token, like the built-in one.
    assert_close(latents["ours_clip"], latents["builtin_clip"], "our DiT vs ComfyUI's built-in, CLIPTextEncode")
    assert not torch.equal(latents["ours_ours"], latents["ours_clip"])


# --- errors a user sees, interrupts, reuse --------------------------------------------------------------------------


def _failure(server, prompt: dict) -> str:
    entry = server.wait(server.queue(prompt), timeout=300)
    assert entry["status"]["status_str"] == "error"
    return server_error(entry)


def server_error(entry: dict) -> str:
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
    prompt = fast(example_prompts()["pixart_sigma_1024"], "test_errors")
    for node_id, inputs in change.items():
        prompt[node_id]["inputs"].update(inputs)
    if expected is None:
        prompt["5"]["inputs"].update(width=250, height=250)
        server.run(prompt, timeout=300)  # 250 px is snapped to 256 px: no error
        return
    message = _failure(server, prompt)
    assert expected in message and len(message) < 1200, message


def test_size_the_model_cannot_take(server):
    prompt = fast(example_prompts()["pixart_sigma_stock_ksampler"], "test_size")
    (latent_id,) = nodes_of(prompt, "EmptyLatentImage")
    prompt[latent_id]["inputs"].update(width=264, height=264)  # 33 latent pixels: not a multiple of the patch
    message = _failure(server, prompt)
    assert "264x264 px is not a multiple of 16 px" in message, message


def test_interrupt_stops_sampling(server):
    prompt = fast(example_prompts()["pixart_sigma_1024"], "test_interrupt", steps=5000)
    prompt_id = server.queue(prompt)
    deadline = time.monotonic() + 120
    while not server.get("/queue")["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # loaders are cached by now: sampling is under way
    started = time.monotonic()
    server.post("/interrupt", {})
    entry = server.wait(prompt_id, timeout=120)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    assert time.monotonic() - started < 60


def test_second_run_reuses_loaded_models(server):
    prompt = fast(example_prompts()["pixart_sigma_1024"], "test_reuse")
    server.run(prompt, timeout=300)
    loads = server.log().count("PixArt DiT loaded")
    prompt = fast(example_prompts()["pixart_sigma_1024"], "test_reuse", seed=1234)
    entry = server.run(prompt, timeout=300)
    cached = {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}
    loaders = set(nodes_of(prompt, "PixArtSigmaDiTLoader") + nodes_of(prompt, "PixArtSigmaT5Loader"))
    assert loaders <= cached, (loaders, cached)
    assert server.log().count("PixArt DiT loaded") == loads


def test_custom_sampling_nodes_match(server):
    """Our MODEL through ModelSamplingDiscrete + SamplerCustomAdvanced gives what PixArt Sigma Sampler gives."""
    prompt = fast(example_prompts()["pixart_sigma_1024"], "test_custom")
    sampling = prompt.pop("6")["inputs"]
    prompt["40"] = node("ModelSamplingDiscrete", model=["4", 0], sampling="eps", zsnr=False)
    prompt["41"] = node("RandomNoise", noise_seed=sampling["seed"])
    prompt["42"] = node("CFGGuider", model=["40", 0], positive=["2", 0], negative=["3", 0], cfg=sampling["cfg"])
    prompt["43"] = node("KSamplerSelect", sampler_name=sampling["sampler_name"])
    steps, scheduler = sampling["steps"], sampling["scheduler"]
    prompt["44"] = node("BasicScheduler", model=["40", 0], scheduler=scheduler, steps=steps, denoise=1.0)
    links = {"noise": ["41", 0], "guider": ["42", 0], "sampler": ["43", 0], "sigmas": ["44", 0]}
    prompt["6"] = node("SamplerCustomAdvanced", latent_image=["5", 0], **links)
    latent = saved_latent(server, server.run(prompt, timeout=300))
    reference = fast(example_prompts()["pixart_sigma_1024"], "unused")
    assert_close(latent, reference_latent(server.base / "models", reference, tuple(latent.shape), "sigma"), "custom")


def test_torch_compile_model_node_compiles_our_dit(server):
    """ComfyUI's own TorchCompileModel (inductor) on our MODEL: the optional torch.compile switch inside ComfyUI.
    The compiled sampling gives the uncompiled reference latent."""
    prompt = fast(example_prompts()["pixart_sigma_stock_ksampler"], "test_compile", steps=2)
    prompt["40"] = node("TorchCompileModel", model=["4", 0], backend="inductor")
    prompt["6"]["inputs"]["model"] = ["40", 0]
    latent = saved_latent(server, server.run(prompt, timeout=900))
    want = reference_latent(server.base / "models", prompt, tuple(latent.shape), "sigma")
    assert_close(latent, want, "TorchCompileModel")


# --- checks before a prompt runs, sizes refused before allocation ---------------------------------------------------


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
    prompt = fast(v0_1_prompts()["pixart_sigma_1024"], "test_refused")
    (node_id,) = nodes_of(prompt, node_type)
    prompt[node_id]["inputs"].update(change)
    with pytest.raises(RuntimeError) as rejected:  # PromptRejected: nothing was queued
        server.queue(prompt)
    text = str(rejected.value)
    assert expected in text and f'"{node_id}"' in text, text


def test_sizes_that_cannot_fit_are_refused_before_allocating(server):
    """A 16384 x 16384 px batch through PixArt Sigma Resolution (its images alone exceed any RAM) and an 8-image
    16384 x 16384 latent into PixArt Sigma Sampler (sampling needs hundreds of GiB): each a short message with the
    numbers and a way out, and the server keeps running."""
    prompt = fast(v0_1_prompts()["pixart_sigma_1024"], "test_huge")
    prompt["5"]["inputs"].update(aspect_ratio="custom (width x height, snapped)", width=16384, height=16384)
    prompt["5"]["inputs"]["batch_size"] = 4096
    message = _failure(server, prompt)
    assert "PixArt Sigma Resolution: 4096 x 16384x16384 px needs" in message and "smaller batch_size" in message
    prompt = fast(v0_1_prompts()["pixart_sigma_stock_ksampler"], "test_huge")
    (sampler_id,) = nodes_of(prompt, "KSampler")
    (latent_id,) = nodes_of(prompt, "EmptyLatentImage")
    prompt[sampler_id]["class_type"] = "PixArtSigmaSampler"
    prompt[latent_id]["inputs"].update(width=16384, height=16384, batch_size=8)
    message = _failure(server, prompt)
    assert "PixArt Sigma Sampler: 8 x 16384x16384 px needs at least" in message, message
    assert "KV compression" in message and len(message) < 600, message
    assert server.get("/system_stats")
