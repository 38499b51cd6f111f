"""The pack in the session's ComfyUI server (marker ``comfy``): loading, /object_info, the example workflows (those
shipped now and the four shipped with 0.1, tests/fixtures/workflows_v0_1/), interop with ComfyUI's own PixArt nodes,
ComfyUI's custom-sampling and torch.compile nodes on our MODEL. Tiny random weights (scripts/tiny_weights.py).

Every run's sampled latent (SaveLatent added to the graph) is compared with ``pixart`` plus an independent
DPM-Solver++(2M) over ComfyUI's schedule, and with the latent recorded before the one-house rework
(tests/comfy/workflow_latents.py, <= 1e-6 relative); the decoded images are only checked for their size (the VAE is
random).
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import load_file
from workflow_latents import RECORDED, cases, fast, latent_prompt, nodes_of, one_sampler, prompts_of, recording, reduced
from workflow_runs import DIT, assert_close, choices, interop_prompt, node, reference_latent, saved_latent

pytestmark = pytest.mark.comfy
OUR_NODES = {"PixArtSigmaT5Loader", "PixArtSigmaTextEncode", "PixArtSigmaDiTLoader", "PixArtSigmaSampler",
             "PixArtSigmaResolution", "PixArtSigmaLoraLoader"}  # fmt: skip
# The final latents of the 0.1 workflows (``fast`` settings, tiny weights) as the pre-V3 nodes (commit 1eff523) gave
# them in ComfyUI 0.33.0 and 0.3.64 (identical in both): shape, sum, sum of |x|, first values.
V0_1_LATENTS = json.loads((RECORDED.parent / "latents_v0_1_before_v3.json").read_text())
RECORDED_TOL = 1e-6
# The examples one PixArtSigmaSampler / KSampler samples; the recipe examples (SamplerCustomAdvanced, two
# KSamplerAdvanced) run in test_recipe_example_runs_headless.
EXAMPLE_CASES = [(source, name) for source, name in cases() if one_sampler(prompts_of(source)[name])]
RECIPE_EXAMPLES = {  # name -> the image file prefix its SaveImage writes
    "pixart_alpha_dmd_one_step": "PixArtAlphaDMD",
    "pixart_alpha_lcm_4_steps": "PixArtAlphaLCM",
    "pixart_sigma_900m_two_stage": "PixArtSigma900M",
    "pixart_sigma_4k_kv_compress": "PixArtSigma4K",
}


@pytest.fixture(scope="module")
def recorded(comfyui):
    """{"<source>/<name>": latent} recorded before the one-house rework with this ComfyUI version."""
    return load_file(str(recording(comfyui.version)))


def assert_recorded(latent: torch.Tensor, recorded: dict, source: str, name: str) -> None:
    want = recorded[f"{source}/{name}"]
    assert latent.shape == want.shape, (name, tuple(latent.shape), tuple(want.shape))
    err = ((latent - want).abs().max() / want.abs().max()).item()
    assert err <= RECORDED_TOL, f"{source}/{name}: {err:.2e} from the recorded latent (tolerance {RECORDED_TOL:.0e})"


def test_pack_imports_through_comfyui_loader(server):
    text = server.log()
    assert "IMPORT FAILED" not in text, text[-3000:]
    assert any("comfyui-pixart-sigma" in line and "seconds" in line for line in text.splitlines()), text[-3000:]


def test_object_info_lists_the_nodes(server):
    info = server.get("/object_info")
    assert set(info) >= OUR_NODES, sorted(OUR_NODES - set(info))
    for name in OUR_NODES:
        spec = info[name]
        assert "PixArt Sigma" in spec["display_name"] and spec["category"].startswith("PixArt-Sigma")
        assert "PixArt Sigma" in spec["description"]
        for input_name, input_spec in spec["input"]["required"].items():
            assert input_spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(spec["output_tooltips"]), name
        json.dumps(spec).encode("cp1252")  # everything a user sees encodes on Windows consoles
    sampler = info["PixArtSigmaSampler"]["input"]["required"]
    assert "dpmpp_2m" in choices(sampler["sampler_name"]) and sampler["seed"][1]["control_after_generate"]
    assert DIT in choices(info["PixArtSigmaDiTLoader"]["input"]["required"]["ckpt_name"])
    assert info["PixArtSigmaResolution"]["output_name"] == ["latent", "width", "height", "note"]


def test_example_workflows_are_templates(server):
    templates = server.get("/api/workflow_templates")
    assert sorted(templates.get("comfyui-pixart-sigma", [])) == sorted(prompts_of("examples"))


@pytest.mark.parametrize(("source", "name"), EXAMPLE_CASES)
def test_example_workflow_runs_and_matches_pixart(comfyui, server, recorded, source, name):
    prompt = latent_prompt(source, name)
    assert prompt == fast(prompts_of(source)[name], f"test_{source}_{name}")
    entry = server.run(prompt, timeout=300)
    latent = saved_latent(server, entry)
    assert_recorded(latent, recorded, source, name)
    if source == "v0_1":  # the V3 nodes give what the pre-V3 nodes gave
        before = V0_1_LATENTS[name]
        assert list(latent.shape) == before["shape"]
        got = [float(latent.double().sum()), float(latent.double().abs().sum()), *map(float, latent.flatten()[:8])]
        want = [before["sum"], before["abs_sum"], *before["first"]]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-3 * before["max_abs"]), name
    family = "alpha" if "alpha" in name else "sigma"
    want = reference_latent(comfyui.models, comfyui.tokenizer(), prompt, tuple(latent.shape), family)
    assert_close(latent, want, name)
    from PIL import Image

    ((_, png),) = server.images(entry)
    assert Image.open(io.BytesIO(png)).size == (8 * latent.shape[3], 8 * latent.shape[2])


@pytest.mark.parametrize("name", sorted(RECIPE_EXAMPLES))
def test_recipe_example_runs_headless(server, recorded, name):
    """The recipe examples (DMD one step, LCM 4 steps, 900M two-stage, 4K) at 256 px and few steps write their
    image; those not sampled by one sampler give their recorded latent."""
    prompt = reduced(prompts_of("examples")[name])
    if not one_sampler(prompt):
        prompt = latent_prompt("examples", name)
    entry = server.run(prompt, timeout=600)
    if not one_sampler(prompt):
        assert_recorded(saved_latent(server, entry), recorded, "examples", name)
    from PIL import Image

    (image,) = [png for file_name, png in server.images(entry) if file_name.startswith(RECIPE_EXAMPLES[name] + "_")]
    assert Image.open(io.BytesIO(image)).size == (256, 256), name


# --- interop with ComfyUI's own PixArt support ----------------------------------------------------------------------


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


def test_custom_sampling_nodes_match(comfyui, server):
    """Our MODEL through ModelSamplingDiscrete + SamplerCustomAdvanced gives what PixArt Sigma Sampler gives."""
    prompt = fast(prompts_of("examples")["pixart_sigma_1024"], "test_custom")
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
    reference = fast(prompts_of("examples")["pixart_sigma_1024"], "unused")
    want = reference_latent(comfyui.models, comfyui.tokenizer(), reference, tuple(latent.shape), "sigma")
    assert_close(latent, want, "custom")


def test_torch_compile_model_node_compiles_our_dit(comfyui, server):
    """ComfyUI's own TorchCompileModel (inductor) on our MODEL: the optional torch.compile switch inside ComfyUI.
    The compiled sampling gives the uncompiled reference latent."""
    prompt = fast(prompts_of("examples")["pixart_sigma_stock_ksampler"], "test_compile", steps=2)
    prompt["40"] = node("TorchCompileModel", model=["4", 0], backend="inductor")
    prompt["6"]["inputs"]["model"] = ["40", 0]
    latent = saved_latent(server, server.run(prompt, timeout=900))
    want = reference_latent(comfyui.models, comfyui.tokenizer(), prompt, tuple(latent.shape), "sigma")
    assert_close(latent, want, "TorchCompileModel")


def test_every_saved_workflow_is_recorded(recorded):
    """The recordings cover exactly the example and 0.1 workflows (a new example needs its latent recorded)."""
    assert sorted(recorded) == sorted(f"{source}/{name}" for source, name in cases())
    assert all(nodes_of(latent_prompt(s, n), "SaveLatent") for s, n in cases())
