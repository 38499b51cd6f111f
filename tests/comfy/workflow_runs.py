"""Helpers of the tests that run prompts on the session's ComfyUI server: prompt pieces, saved latents, and an
independent reference for a sampled latent: ``pixart`` plus our own DPM-Solver++(2M) over ComfyUI's discrete EPS
schedule (sgm_uniform)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from workflow_latents import nodes_of

import pixart
from pixart.text_encoder import load_t5

T5 = "t5xxl_fp16.safetensors"
DIT = "PixArt-Sigma-XL-2-1024-MS.pth"
STEPS = 2  # of the interop prompt: 512 px, four samplers; two timesteps, the second with dpmpp_2m's history term
LATENT_SCALE = {"sigma": 0.13025, "alpha": 0.18215}
PROMPT = "a lighthouse on a cliff over a stormy sea"
CLIP_T5 = "t5xxl_comfy_stub.pth"


def node(kind: str, **inputs) -> dict:
    """One API-format node."""
    return {"class_type": kind, "inputs": inputs}


def choices(spec) -> list:
    """The choices of a combo input in /object_info: V1 lists them first, V3 as ("COMBO", {"options": [...]})."""
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def saved_latent(server, entry: dict) -> torch.Tensor:
    """The latent the prompt's (one) SaveLatent wrote."""
    (info,) = [x for out in entry["outputs"].values() for x in out.get("latents", [])]
    return load_file(str(server.base / "output" / info["subfolder"] / info["filename"]))["latent_tensor"]


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


# --- the reference: pixart + ComfyUI's discrete EPS schedule + DPM-Solver++(2M) -----------------------------------


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


@functools.lru_cache(maxsize=1)
def reference_t5(path: Path, tokenizer: Path):
    """The reference's T5 (fp32) of ``path``, loaded once for the runs that share it."""
    return load_t5(path, dtype=torch.float32, fallback_tokenizer_dirs=[tokenizer])


def reference_latent(models: Path, tokenizer: Path, prompt: dict, shape: tuple[int, ...], family: str) -> torch.Tensor:
    """What the prompt's DiT, T5, seed, steps and CFG give through ``pixart`` and our own sampler (B, C_in, H, W)."""
    (dit_id,) = nodes_of(prompt, "PixArtSigmaDiTLoader")
    (sampler_id,) = nodes_of(prompt, "PixArtSigmaSampler") + nodes_of(prompt, "KSampler")
    dit, sampling = prompt[dit_id]["inputs"], prompt[sampler_id]["inputs"]
    kv = None
    if dit["kv_compress"] != "off":
        kv = pixart.KVCompress(dit["kv_compress"], dit["kv_factor"], None)
    model = pixart.load_dit(models / "diffusion_models" / dit["ckpt_name"], dit["variant"], torch.float32, kv)
    t5 = reference_t5(models / "text_encoders" / T5, tokenizer)
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
