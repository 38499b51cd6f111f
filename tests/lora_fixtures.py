"""Tiny PixArt LoRAs made with PEFT on the diffusers reference model, and writers for every LoRA naming.

``make_peft`` injects a LoRA (random non-zero A and B) into a copy of the reference; PEFT's own forward and
``merge_and_unload`` are the ground truth. The writers store the same update under each naming we read.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pixart.checkpoints.keymap import diffusers_module_target, diffusers_to_official, official_to_diffusers

# Every linear/conv of diffusers' PixArtTransformer2DModel: attention, feed-forward, proj_out, caption projection,
# timestep embedder, adaLN-single linear and the patch-embedding convolution (the official script's "proj").
ALL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_out", "linear_1", "linear_2"]
ALL_TARGETS += ["linear", "proj"]


def make_peft(reference, seed: int = 3, targets=None, **config):
    """A PeftModel around a copy of ``reference`` with every lora_A/lora_B set to seeded noise (std 0.1).

    ``config`` goes to ``LoraConfig`` (default r=4, lora_alpha=8, so scale 2).
    """
    from peft import LoraConfig, get_peft_model

    settings = {"r": 4, "lora_alpha": 8, "init_lora_weights": False, **config}
    lora_config = LoraConfig(target_modules=targets or ALL_TARGETS, **settings)
    model = get_peft_model(copy.deepcopy(reference), lora_config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    """LoRA tensors keyed by diffusers module names: ``transformer_blocks.0.attn1.to_q.lora_A.weight``."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    return {k.removeprefix("base_model.model."): v.contiguous() for k, v in state.items()}


def lora_scales(peft_model) -> dict[str, float]:
    """PEFT's scale (alpha / r) of each LoRA module, by diffusers module name."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return {n: m.scaling["default"] for n, m in base.named_modules() if isinstance(m, LoraLayer)}


def merged_official(peft_model) -> dict[str, torch.Tensor]:
    """PEFT's merged weights (``merge_and_unload``) under official names."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    state, unknown = diffusers_to_official(merged.state_dict())
    assert not unknown
    return state


def _pairs(state: dict[str, torch.Tensor]):
    """(module, down, up) for each module of a diffusers-keyed PEFT state (prefixes such as ``transformer.`` kept)."""
    for key in sorted(state):
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            yield module, state[key], state[f"{module}.lora_B.weight"]


def write_peft_folder(peft_model, folder: Path) -> Path:
    """``PeftModel.save_pretrained``: adapter_model.safetensors + adapter_config.json."""
    peft_model.save_pretrained(str(folder))
    return folder


def write_official_script(peft_model, folder: Path) -> Path:
    """What the official PixArt LoRA script saves: the PEFT folder, and beside it ``StableDiffusionPipeline
    .save_lora_weights(unet_lora_layers=get_peft_model_state_dict(peft_model))`` (keys
    ``unet.base_model.model....``, no alpha)."""
    from diffusers import StableDiffusionPipeline
    from peft import get_peft_model_state_dict

    peft_model.save_pretrained(str(folder))
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(folder), unet_lora_layers=get_peft_model_state_dict(peft_model), safe_serialization=True
    )
    return folder / "pytorch_lora_weights.safetensors"


def write_diffusers(peft_model, folder: Path) -> Path:
    """diffusers' ``save_lora_weights(transformer_lora_layers=..., transformer_lora_adapter_metadata=...)`` as the
    transformer pipelines write it (keys ``transformer....``, LoraConfig in the safetensors header). diffusers has
    no PixArt LoRA mixin, so Sana's (same transformer prefix) does the writing."""
    from diffusers.loaders.lora_pipeline import SanaLoraLoaderMixin

    SanaLoraLoaderMixin.save_lora_weights(
        str(folder),
        transformer_lora_layers=lora_state(peft_model),
        transformer_lora_adapter_metadata=peft_model.peft_config["default"].to_dict(),
    )
    return folder / "pytorch_lora_weights.safetensors"


def write_old_diffusers(state: dict, scales: dict, path: Path) -> Path:
    """Older diffusers naming ``transformer.<module>.lora.down/up.weight`` (no alpha: scale folded into up), as a
    torch ``.bin``. ``state``: diffusers-keyed lora_A/lora_B tensors; ``scales``: alpha / r by module."""
    out = {}
    for module, down, up in _pairs(state):
        out[f"transformer.{module}.lora.down.weight"] = down
        out[f"transformer.{module}.lora.up.weight"] = up * scales[module]
    torch.save(out, path)
    return path


def write_kohya(state: dict, scales: dict, path: Path) -> Path:
    """kohya naming ``lora_unet_<module with _>.lora_down/lora_up.weight`` + ``.alpha``."""
    out = {}
    for module, down, up in _pairs(state):
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(scales[module] * down.shape[0])
    save_file(out, str(path))
    return path


def write_official_keys(state: dict, scales: dict, path: Path, underscore: bool = False) -> Path:
    """Official module names (``blocks.0.attn.qkv.lora_A.weight``): q, k, v (and k, v) LoRAs fused into one of
    rank sum(r) with a block-diagonal up, scales folded into up, ``.alpha`` = rank (scale 1)."""
    fused: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for module, down, up in _pairs(state):
        target = diffusers_module_target(module)
        fused.setdefault(target.module, {})[target.chunk] = (down, up * scales[module])
    out = {}
    for module, chunks in fused.items():
        downs, ups = zip(*(chunks[i] for i in sorted(chunks)), strict=True)
        down = torch.cat(downs) if len(downs) > 1 else downs[0]
        up = torch.block_diag(*(u.flatten(1) for u in ups)) if len(ups) > 1 else ups[0]
        name = "lora_unet_" + module.replace(".", "_") if underscore else module
        out[f"{name}.lora_A.weight"] = down.contiguous()
        out[f"{name}.lora_B.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    save_file(out, str(path))
    return path


def write_adapter_folder(state: dict, r: int, lora_alpha: float, folder: Path) -> Path:
    """A PEFT adapter folder written by hand (no PEFT model needed): ``base_model.model.`` keys + a minimal config."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"base_model.model.{k}": v for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": lora_alpha, "rank_pattern": {}, "alpha_pattern": {}}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def random_lora(official: dict[str, torch.Tensor], rank: int, seed: int, std: float = 0.05) -> dict:
    """Seeded diffusers-keyed lora_A/lora_B tensors for every linear/conv of a model given by its official state dict
    (the patch-embedding conv gets (r, C_in, p, p) / (C, r, 1, 1) like PEFT's Conv2d LoRA)."""
    g = torch.Generator().manual_seed(seed)
    weights = {k: v for k, v in official.items() if k.endswith(".weight") and v.ndim in (2, 4)}
    state = {}
    for key, weight in sorted(official_to_diffusers(weights).items()):
        module = key.removesuffix(".weight")
        if diffusers_module_target(module) is None:
            continue
        down_shape, up_shape = (rank, *weight.shape[1:]), (weight.shape[0], rank, *([1] * (weight.ndim - 2)))
        state[f"{module}.lora_A.weight"] = torch.randn(down_shape, generator=g) * std
        state[f"{module}.lora_B.weight"] = torch.randn(up_shape, generator=g) * std
    return state


def _state_and_scales(peft_model) -> tuple[dict, dict]:
    return lora_state(peft_model), lora_scales(peft_model)


WRITERS = {
    "peft-folder": lambda m, d: write_peft_folder(m, d / "peft_adapter"),
    "official-script": lambda m, d: write_official_script(m, d / "checkpoint-100"),
    "diffusers": lambda m, d: write_diffusers(m, d / "diffusers"),
    "old-lora-down-up": lambda m, d: write_old_diffusers(*_state_and_scales(m), d / "old.bin"),
    "kohya": lambda m, d: write_kohya(*_state_and_scales(m), d / "kohya.safetensors"),
    "official-keys": lambda m, d: write_official_keys(*_state_and_scales(m), d / "official.safetensors"),
    "official-underscore": lambda m, d: write_official_keys(
        *_state_and_scales(m), d / "official_us.safetensors", underscore=True
    ),
}


# LyCORIS / DoRA / ComfyUI-trained files, built from a model's official state dict, and the formulas they mean ------

# Modules the synthetic files update, by the names each trainer writes: diffusers names (split q / k / v, k / v:
# fused row blocks here) or official ones (whole fused weights).
DIFFUSERS_MODULES = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn1.to_v",
                     "transformer_blocks.0.attn2.to_k", "transformer_blocks.1.ff.net.0.proj", "proj_out",
                     "adaln_single.linear"]  # fmt: skip
OFFICIAL_MODULES = ["blocks.0.attn.qkv", "blocks.1.cross_attn.kv_linear", "blocks.0.mlp.fc2", "final_layer.linear",
                    "t_block.1", "y_embedder.y_proj.fc1"]  # fmt: skip
NAMINGS = {  # naming -> (modules, module name as the file spells it)
    "simpletuner-lycoris": (DIFFUSERS_MODULES, lambda m: "lycoris_" + m.replace(".", "_")),
    "onetrainer": (DIFFUSERS_MODULES, lambda m: "lora_transformer_" + m.replace(".", "_")),
    "diffusers": (DIFFUSERS_MODULES, lambda m: "transformer." + m),
    "kohya-lycoris": (OFFICIAL_MODULES, lambda m: "lora_unet_" + m.replace(".", "_")),
    "comfyui": (OFFICIAL_MODULES, lambda m: "diffusion_model." + m),
}
KINDS = ("loha", "lokr", "dora", "oft", "lora-bias")


def module_rows(official: dict, module: str) -> tuple[str, int, int, int, int]:
    """(official module, chunk, chunks, rows of the chunk, inputs) of a diffusers or official module name."""
    target = diffusers_module_target(module)
    name, chunk, chunks = (target.module, target.chunk, target.chunks) if target else (module, 0, 1)
    weight = official[f"{name}.weight"]
    return name, chunk, chunks, weight.shape[0] // chunks, weight[0].numel()


def synthetic_parts(kind: str, rows: int, width: int, base_rows: torch.Tensor, g) -> dict[str, torch.Tensor]:
    """Seeded parts of one module's update of ``kind`` (``KINDS``), ComfyUI / LyCORIS part names; ``base_rows``:
    the weight rows it updates, for a DoRA scale near their column norms."""

    def rand(*shape, std=0.1):
        return torch.randn(shape, generator=g) * std

    if kind == "loha":
        return {"hada_w1_a": rand(rows, 2), "hada_w1_b": rand(2, width), "hada_w2_a": rand(rows, 2),
                "hada_w2_b": rand(2, width), "alpha": torch.tensor(1.5)}  # fmt: skip
    if kind == "lokr":  # w1 whole (2, 2), w2 as two rank-3 factors: LyCORIS's layout for wide layers
        return {"lokr_w1": rand(2, 2, std=1.0), "lokr_w2_a": rand(rows // 2, 3), "lokr_w2_b": rand(3, width // 2),
                "alpha": torch.tensor(2.0)}  # fmt: skip
    if kind == "dora":  # kohya / LyCORIS DoRA: one magnitude per input column
        scale = base_rows.reshape(rows, -1).norm(dim=0, keepdim=True) * (1 + rand(1, width))
        return {"lora_down.weight": rand(4, width), "lora_up.weight": rand(rows, 4), "alpha": torch.tensor(2.0),
                "dora_scale": scale}  # fmt: skip
    if kind == "oft":
        return {"oft_blocks": rand(rows // 4, 4, 4), "alpha": torch.tensor(0.0)}
    if kind == "lora-bias":  # ComfyUI's TrainLoraNode: LoRA + a trained bias difference per layer
        return {"lora_down.weight": rand(4, width), "lora_up.weight": rand(rows, 4), "alpha": torch.tensor(1.0),
                "diff_b": rand(rows)}  # fmt: skip
    raise ValueError(kind)


def synthetic_file(official: dict, kind: str, naming: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """{key: tensor} of a ``kind`` file in ``naming`` (``NAMINGS``) for the model of ``official``."""
    modules, spell = NAMINGS[naming]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for module in modules:
        name, chunk, _, rows, width = module_rows(official, module)
        base_rows = official[f"{name}.weight"][chunk * rows : (chunk + 1) * rows]
        parts = synthetic_parts(kind, rows, width, base_rows, g)
        out.update({f"{spell(module)}.{part}": tensor for part, tensor in parts.items()})
    return out


def formula_update(kind: str, weight: torch.Tensor, parts: dict, strength: float) -> torch.Tensor:
    """The weight rows ``weight`` (rows, ...) after an update of ``kind`` at ``strength``, from the formulas (fp32):
    LoHa ``(w1a w1b) * (w2a w2b) alpha / r``; LoKr ``kron(w1, w2_a w2_b) alpha / r2``; DoRA (per input)
    ``(W + dW) m / ||W + dW||_col``; OFT ``W + strength^2 (R^T - I) W`` per block (ComfyUI's strength), with
    ``R = (I + Q)(I - Q)^-1``, ``Q = B - B^T``."""
    w = weight.float().reshape(weight.shape[0], -1)
    p = {k: v.float() for k, v in parts.items()}
    if kind == "loha":
        delta = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"]) * p["alpha"] / 2
    elif kind == "lokr":
        delta = torch.kron(p["lokr_w1"], p["lokr_w2_a"] @ p["lokr_w2_b"]) * p["alpha"] / 3
    elif kind in ("dora", "lora-bias"):
        delta = p["lora_up.weight"] @ p["lora_down.weight"] * p["alpha"] / 4
        if kind == "dora":
            updated = w + delta
            delta = updated * (p["dora_scale"] / updated.norm(dim=0, keepdim=True)) - w
    elif kind == "oft":
        blocks = p["oft_blocks"]
        eye = torch.eye(blocks.shape[1])
        q = blocks - blocks.transpose(1, 2)
        rotation = (eye + q) @ torch.linalg.inv(eye - q)
        blocked = w.reshape(blocks.shape[0], blocks.shape[1], -1)
        # ComfyUI scales the rotation's difference by the strength twice (comfy/weight_adapter/oft.py, both trees)
        delta = strength * (torch.einsum("knm,knw->kmw", rotation, blocked) - blocked).reshape(w.shape)
    else:
        raise ValueError(kind)
    return (w + strength * delta).reshape(weight.shape)


def formula_state(official: dict, tensors: dict, kind: str, naming: str, strength: float) -> dict[str, torch.Tensor]:
    """``official`` with the synthetic file ``tensors`` (``synthetic_file``) applied by the formulas, fp32."""
    modules, spell = NAMINGS[naming]
    out = {k: v.float().clone() for k, v in official.items()}
    for module in modules:
        name, chunk, _, rows, _ = module_rows(official, module)
        prefix = spell(module) + "."
        parts = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        span = slice(chunk * rows, (chunk + 1) * rows)
        out[f"{name}.weight"][span] = formula_update(kind, out[f"{name}.weight"][span], parts, strength)
        if "diff_b" in parts:
            out[f"{name}.bias"][span] += strength * parts["diff_b"].float()
    return out
