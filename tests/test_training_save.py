"""Every trained output loads and gives the trained model's prediction: the LoRA file in pixart.lora (and by
ComfyUI's whole-weight LoRA rule), the PEFT folder in diffusers through PEFT, the full fine-tune in our loader and in
diffusers; nothing is ever overwritten."""

import copy
import json

import pytest
import torch
from dit_fixtures import reference_forward
from safetensors.torch import load_file
from training_fixtures import batch, pair, rel

from pixart import PixArtTransformer, load_dit, read_checkpoint
from pixart.lora import load_lora, merge_lora
from pixart.training import (
    OutputExistsError,
    Trainer,
    TrainingError,
    preset,
    save_full_diffusers,
    save_full_official,
    save_lora_file,
    save_peft_folder,
)

pytest.importorskip("diffusers")

TOL = 1e-5
HEADS = {"num_heads": 3}  # a 96-wide tiny model: heads cannot be read off the shapes


def _predict(model, inputs):
    latents, caption, mask, _, t = inputs
    with torch.no_grad():
        return model.eval()(latents, t, caption, mask)


def _trained_lora(targets: str):
    """A LoRA run of two steps at a large lr (so every A and B is non-zero) and the base weights it started from."""
    config, reference, model = pair()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    settings = preset("pixart_sigma_512_lora", precision="fp32", lora_rank=4, lora_alpha=8.0, lora_targets=targets)
    trainer = Trainer(model, settings.replace(learning_rate=1e-2))
    inputs = batch(config, timesteps=(3, 1, 500, 999))
    for _ in range(2):
        trainer.step(*inputs[:3])
    assert all(up.abs().max() > 0 for _, _, up in trainer.lora.pairs())
    return config, reference, model, base, trainer.lora, inputs


def _model_from(config, state_dict):
    model = PixArtTransformer(config, token_chunk=None)
    model.load_state_dict(state_dict)
    return model


@pytest.mark.parametrize("targets", ["attention", "all_linear"])
def test_lora_file_loads_in_pixart_lora(tmp_path, targets):
    config, _, model, base, lora, inputs = _trained_lora(targets)
    expected = _predict(model, inputs)
    path = save_lora_file(lora, tmp_path / "trained.safetensors")
    merged = merge_lora(base, load_lora(path))
    got = _predict(_model_from(config, merged), inputs)
    assert rel(got, expected) <= TOL
    assert rel(expected, _predict(_model_from(config, base), inputs)) > 1e-3  # the LoRA changes the output


def test_lora_file_follows_comfyui_whole_weight_rule(tmp_path):
    """ComfyUI maps ``diffusion_model.<module>`` to that module's weight for any model and adds
    ``alpha / rank * up @ down`` (comfy/lora.py, comfy/weight_adapter/lora.py); done here by hand."""
    config, _, model, base, lora, inputs = _trained_lora("attention")
    expected = _predict(model, inputs)
    tensors = load_file(str(save_lora_file(lora, tmp_path / "trained.safetensors")))
    comfy_keys = {"diffusion_model." + k for k in base}
    patched = dict(base)
    modules = {k.rsplit(".lora_", 1)[0] for k in tensors if ".lora_" in k}
    assert modules == {k.removesuffix(".alpha") for k in tensors if k.endswith(".alpha")}
    assert {"diffusion_model.blocks.0.attn.qkv", "diffusion_model.blocks.1.cross_attn.kv_linear"} <= modules
    for module in modules:
        assert f"{module}.weight" in comfy_keys
        down, up = tensors[f"{module}.lora_down.weight"], tensors[f"{module}.lora_up.weight"]
        key = module.removeprefix("diffusion_model.") + ".weight"
        patched[key] = base[key] + tensors[f"{module}.alpha"].item() / down.shape[0] * (up @ down)
    assert rel(_predict(_model_from(config, patched), inputs), expected) <= TOL


@pytest.mark.parametrize("targets", ["attention", "all_linear"])
def test_peft_folder_loads_in_diffusers_and_pixart_lora(tmp_path, targets):
    from peft import PeftModel

    config, reference, model, base, lora, inputs = _trained_lora(targets)
    expected = _predict(model, inputs)
    folder = save_peft_folder(lora, tmp_path / "adapter")
    settings = json.loads((folder / "adapter_config.json").read_text())
    assert (settings["r"], settings["lora_alpha"], settings["peft_type"]) == (4, 8.0, "LORA")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(reference), str(folder)).eval()
    latents, caption, mask, _, t = inputs
    assert rel(reference_forward(peft_model, latents, t, caption, mask), expected) <= TOL
    assert rel(_predict(_model_from(config, merge_lora(base, load_lora(folder))), inputs), expected) <= TOL


def _trained_full():
    config, reference, model = pair()
    trainer = Trainer(model, preset("pixart_sigma_512_pokemon", precision="fp32", learning_rate=1e-3))
    inputs = batch(config, timesteps=(3, 1, 500, 999))
    trainer.step(*inputs[:3])
    return config, reference, model, inputs


def test_full_official_file_loads_in_our_loader(tmp_path):
    config, reference, model, inputs = _trained_full()
    expected = _predict(model, inputs)
    path = save_full_official(model, tmp_path / "finetune.safetensors")
    state_dict, detected = read_checkpoint(path, HEADS)
    assert detected == config
    assert rel(_predict(_model_from(detected, state_dict), inputs), expected) <= TOL
    assert rel(_predict(load_dit(path, HEADS), inputs), expected) <= TOL
    latents, caption, mask, _, t = inputs
    assert rel(reference_forward(reference, latents, t, caption, mask), expected) > 1e-4  # it was trained


def test_full_diffusers_folder_loads_in_diffusers_and_our_loader(tmp_path):
    from diffusers import PixArtTransformer2DModel

    config, _, model, inputs = _trained_full()
    expected = _predict(model, inputs)
    folder = save_full_diffusers(model, tmp_path / "pipeline" / "transformer")
    loaded = PixArtTransformer2DModel.from_pretrained(str(folder)).eval()
    latents, caption, mask, _, t = inputs
    assert rel(reference_forward(loaded, latents, t, caption, mask), expected) <= TOL
    state_dict, detected = read_checkpoint(folder)
    assert detected == config
    assert rel(_predict(_model_from(detected, state_dict), inputs), expected) <= TOL


def test_nothing_is_overwritten(tmp_path):
    config, _, model, _, lora, _ = _trained_lora("attention")
    savers = [
        (lambda p: save_lora_file(lora, p), tmp_path / "lora.safetensors", "lora.safetensors"),
        (lambda p: save_peft_folder(lora, p), tmp_path / "adapter", "adapter_config.json"),
        (lambda p: save_full_official(model, p), tmp_path / "full.safetensors", "full.safetensors"),
        (lambda p: save_full_diffusers(model, p), tmp_path / "transformer", "config.json"),
    ]
    for save, path, name in savers:
        save(path)
        written = {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()}
        with pytest.raises(OutputExistsError, match=name):
            save(path)
        assert {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()} == written


def test_kv_compression_weights_have_no_diffusers_slot(tmp_path):
    _, _, model = pair()
    conv = PixArtTransformer(model.config.replace(conv_kv_layers=(1,), conv_kv_factor=2), token_chunk=None)
    with pytest.raises(TrainingError, match=r"transformer: cannot be written as a diffusers folder.*attn\.sr"):
        save_full_diffusers(conv, tmp_path / "transformer")
    assert not (tmp_path / "transformer" / "config.json").exists()


def test_lora_file_in_bf16_keeps_alpha_in_fp32(tmp_path):
    config, _, model, base, lora, inputs = _trained_lora("attention")
    tensors = load_file(str(save_lora_file(lora, tmp_path / "half.safetensors", dtype=torch.bfloat16)))
    assert {v.dtype for k, v in tensors.items() if not k.endswith(".alpha")} == {torch.bfloat16}
    assert {v.dtype for k, v in tensors.items() if k.endswith(".alpha")} == {torch.float32}
    assert tensors["diffusion_model.blocks.0.attn.qkv.alpha"].item() == 2.0 * 12  # alpha / r = 8 / 4, rank 3 x 4
    merged = merge_lora(base, load_lora(tmp_path / "half.safetensors"))
    assert rel(_predict(_model_from(config, merged), inputs), _predict(model, inputs)) <= 1e-2
