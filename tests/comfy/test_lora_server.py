"""PixArt Sigma LoRA Loader inside a real ComfyUI (marker ``comfy``): DiT loader -> LoRA loader(s) -> KSampler ->
VAE decode, headless, on tiny random weights (scripts/tiny_weights.py).

The LoRA's effect is checked against the same workflow run on a DiT file with the LoRA merged in by
``pixart.lora.merge_lora`` (itself checked against PEFT in tests/test_lora.py): same latent up to fp32 rounding.
All on the session's one server (tests/comfy/conftest.py), whose models folder gets the LoRA files first. Files
trained by the tree's own TrainLoraNode and synthetic LyCORIS / DoRA / PEFT files: tests/comfy/test_lora_adapters.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from lora_fixtures import random_lora, write_adapter_folder, write_kohya, write_official_keys
from safetensors.torch import load_file
from workflow_latents import nodes_of, prompts_of

from pixart.lora import load_lora, merge_lora
from scripts import tiny_weights
from scripts.comfy_server import error_message

pytestmark = pytest.mark.comfy
BASE_PROMPT = "pixart_sigma_stock_ksampler"  # DiT loader -> KSampler -> VAE decode -> SaveImage
TOL = 1e-4  # patched weights vs a pre-merged file: both fp32, rounding differs in the last bits only
STEPS = 2  # dpmpp_2m: a first-order step, then one with the history term
WIDTH = 144  # C of the DiT the LoRAs patch through our loader (2 heads); ComfyUI's own PixArt needs 1152
NARROW = "PixArt-Sigma-XL-2-1024-MS-narrow.pth"  # that DiT, beside the example's in models/diffusion_models
BUILTIN_LORA = "kohya_1152.safetensors"  # a LoRA of the example's 1152-wide DiT, for ComfyUI's own PixArt


def merged_name(tag: str) -> str:
    return f"PixArt-Sigma-XL-2-1024-MS-merged-{tag}.pth"


@pytest.fixture(scope="module")
def host(server, models):
    """The session's server, its models folder now also holding a narrow DiT (NARROW) with LoRAs of it in three
    namings and DiT files with those LoRAs merged in (same format and name pattern as the base DiT, so they load the
    same way), a LoRA of the example's 1152-wide DiT (what ComfyUI's own PixArt loads) and that DiT with it merged."""
    prompt = prompts_of("examples")[BASE_PROMPT]
    dit_file = models / "diffusion_models" / prompt[nodes_of(prompt, "PixArtSigmaDiTLoader")[0]]["inputs"]["ckpt_name"]
    wide = torch.load(dit_file, weights_only=True)
    dit = tiny_weights.dit_state_dict("sigma-1024", depth=1, hidden=WIDTH)
    torch.save(dit, models / "diffusion_models" / NARROW)
    loras = models / "loras"
    first, second = random_lora(dit, rank=4, seed=1), random_lora(dit, rank=2, seed=2)
    write_adapter_folder(first, r=4, lora_alpha=8, folder=loras / "adapter")
    write_kohya(first, dict.fromkeys(_modules(first), 2.0), loras / "kohya.safetensors")
    write_official_keys(second, dict.fromkeys(_modules(second), 1.0), loras / "official.safetensors")
    builtin = random_lora(wide, rank=4, seed=1)
    write_kohya(builtin, dict.fromkeys(_modules(builtin), 2.0), loras / BUILTIN_LORA)
    wider = random_lora(tiny_weights.dit_state_dict("sigma-1024", depth=1, hidden=2 * WIDTH), rank=2, seed=3)
    write_official_keys(wider, dict.fromkeys(_modules(wider), 1.0), loras / "wider.safetensors")
    torch.save({"lora_unet_down_blocks_0_attentions_0.lora_down.weight": torch.zeros(4, 320)}, loras / "sdxl.pt")
    for tag, base, stack in (
        ("a1", dit, [("adapter", 1.0)]),
        ("a05", dit, [("adapter", 0.5)]),
        ("stack", dit, [("adapter", 0.7), ("official.safetensors", -0.5)]),
        ("builtin", wide, [(BUILTIN_LORA, 1.0)]),
    ):
        merged = base
        for name, strength in stack:
            merged = merge_lora(merged, load_lora(loras / name), strength)
        torch.save(merged, models / "diffusion_models" / merged_name(tag))
    return server


def _modules(state: dict) -> list[str]:
    return [k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")]


def lora_prompt(loras: list[tuple[str, float]], dit: str | None = None, builtin: bool = False) -> dict:
    """The stock-KSampler example on the DiT file ``dit`` (default NARROW) at 256 px and STEPS steps (its T5 as
    stored, bf16, like the other examples on the shared server, which then keeps it loaded), with LoRA loaders chained
    between DiT and KSampler, and its latent saved. ``builtin``: ``dit`` (default the example's own) through ComfyUI's
    UNETLoader, whose PixArt needs the 1152 width and 512 px."""
    prompt = copy.deepcopy(prompts_of("examples")[BASE_PROMPT])
    (dit_id,), (sampler_id,) = nodes_of(prompt, "PixArtSigmaDiTLoader"), nodes_of(prompt, "KSampler")
    (latent_id,) = nodes_of(prompt, "EmptyLatentImage")
    prompt[latent_id]["inputs"].update(width=512 if builtin else 256, height=512 if builtin else 256)
    prompt[sampler_id]["inputs"].update(steps=STEPS, seed=7)
    if dit or not builtin:
        prompt[dit_id]["inputs"]["ckpt_name"] = dit or NARROW
    if builtin:
        name = prompt[dit_id]["inputs"]["ckpt_name"]
        prompt[dit_id] = {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}
    model = [dit_id, 0]
    for i, (name, strength) in enumerate(loras):
        prompt[f"{100 + i}"] = {
            "class_type": "PixArtSigmaLoraLoader",
            "inputs": {"model": model, "lora_name": name, "strength": strength},
        }
        model = [f"{100 + i}", 0]
    prompt[sampler_id]["inputs"]["model"] = model
    prompt["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": "lora"}}
    return prompt


def run_latent(server, prompt: dict) -> tuple[torch.Tensor, dict]:
    entry = server.run(prompt, timeout=300)
    (info,) = [x for out in entry["outputs"].values() for x in out.get("latents", [])]
    latent = load_file(str(server.base / "output" / info["subfolder"] / info["filename"]))["latent_tensor"]
    assert server.images(entry), "VAEDecode -> SaveImage produced no image"
    return latent, entry


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_node_is_listed_with_files_and_folders(host):
    node = host.get("/object_info/PixArtSigmaLoraLoader")["PixArtSigmaLoraLoader"]
    assert node["display_name"] == "PixArt Sigma LoRA Loader" and node["category"] == "PixArt-Sigma"
    assert node["output_tooltips"] and "PixArt Sigma" in node["description"]
    for name, spec in node["input"]["required"].items():
        assert spec[1].get("tooltip"), name
    spec = node["input"]["required"]["lora_name"]
    choices = spec[0] if isinstance(spec[0], list) else spec[1]["options"]  # V3 combos: ("COMBO", {"options": ...})
    assert {"adapter/", "kohya.safetensors", "official.safetensors"} <= set(choices)
    strength = node["input"]["required"]["strength"][1]
    assert (strength["min"], strength["max"], strength["default"]) == (-10.0, 10.0, 1.0)


def test_lora_equals_merged_model_and_unloads(host):
    base, _ = run_latent(host, lora_prompt([]))
    for name in ("adapter/", "kohya.safetensors"):  # the same LoRA in two namings
        got, _ = run_latent(host, lora_prompt([(name, 1.0)]))
        want, _ = run_latent(host, lora_prompt([], dit=merged_name("a1")))
        assert rel_err(got, want) < TOL, name
        assert rel_err(got, base) > 1e-3, "the LoRA changed nothing"
    again, _ = run_latent(host, lora_prompt([]))
    assert torch.equal(again, base), "the base model's weights were not restored after the LoRA runs"


def test_strength_change_needs_no_reload(host):
    run_latent(host, lora_prompt([("adapter/", 1.0)]))
    got, entry = run_latent(host, lora_prompt([("adapter/", 0.5)]))
    cached = {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}
    assert set(nodes_of(lora_prompt([]), "PixArtSigmaDiTLoader")) <= cached, "the DiT was loaded again"
    want, _ = run_latent(host, lora_prompt([], dit=merged_name("a05")))
    assert rel_err(got, want) < TOL
    zero, _ = run_latent(host, lora_prompt([("adapter/", 0.0)]))
    assert torch.equal(zero, run_latent(host, lora_prompt([]))[0])


def test_stacked_loras(host):
    got, _ = run_latent(host, lora_prompt([("adapter/", 0.7), ("official.safetensors", -0.5)]))
    want, _ = run_latent(host, lora_prompt([], dit=merged_name("stack")))
    assert rel_err(got, want) < TOL


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("wider.safetensors", f"does not fit this model (hidden_size {WIDTH}, 1 block; the LoRA has hidden_size 288"),
        ("sdxl.pt", "'lora_unet_down_blocks_0_attentions_0.lora_down.weight': "),
    ],
)
def test_lora_that_does_not_fit_stops_the_run(host, name, expected):
    entry = host.wait(host.queue(lora_prompt([(name, 1.0)])), timeout=300)
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert expected in message and name in message, message


def test_works_on_comfyui_builtin_pixart(host):
    """ComfyUI's own PixArt (UNETLoader) keeps the official weight names too, so the same patches apply."""
    got, _ = run_latent(host, lora_prompt([(BUILTIN_LORA, 1.0)], builtin=True))
    want, _ = run_latent(host, lora_prompt([], dit=merged_name("builtin"), builtin=True))
    base, _ = run_latent(host, lora_prompt([], builtin=True))
    assert rel_err(got, want) < TOL and rel_err(got, base) > 1e-3
