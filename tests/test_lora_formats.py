"""pixart.lora on the trained formats beyond plain LoRA: LyCORIS LoHa / LoKr / OFT / DoRA, ComfyUI's TrainLoraNode
output (LoRA + ``diff_b``), PEFT with ``lora_B`` biases or DoRA magnitudes, in every trainer's naming.

Each file maps onto the right official modules (fused q / k / v row blocks for diffusers names); what pixart merges
itself (LoRA, PEFT DoRA, weight and bias differences) equals the formulas (PEFT's own ``merge_and_unload`` for the
PEFT files), fp32, <= 1e-5; the rest is refused by ``merge_lora`` by name, and applied by ComfyUI
(tests/test_comfy_lora.py). Any key that is not part of a complete update refuses the whole file, naming it.
"""

from __future__ import annotations

import pytest
import torch
from dit_fixtures import max_rel_error, official_state_dict, reference_model, tiny_config
from lora_fixtures import (
    KINDS,
    NAMINGS,
    formula_state,
    make_peft,
    merged_official,
    module_rows,
    synthetic_file,
    write_peft_folder,
)
from safetensors.torch import save_file

from pixart.lora import LoraError, check_fit, load_lora, merge_lora

TOL = 1e-5
PART_OF_KIND = {"loha": "hada_w1_a", "lokr": "lokr_w1", "oft": "oft_blocks"}


@pytest.fixture(scope="module")
def reference():
    return reference_model(tiny_config())


@pytest.fixture(scope="module")
def base(reference):
    return official_state_dict(reference, tiny_config(), training_extras=False)


def _save(path, tensors):
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path))
    return path


def _err(call) -> str:
    with pytest.raises(LoraError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("naming", list(NAMINGS))
@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_files_map_to_their_modules(kind, naming, base, tmp_path):
    tensors = synthetic_file(base, kind, naming, seed=1)
    lora = load_lora(_save(tmp_path / f"{kind}.safetensors", tensors))
    check_fit(lora, {k: v.shape for k, v in base.items()})
    modules, spell = NAMINGS[naming]
    want = set()
    for module in modules:
        name, chunk, chunks, _, _ = module_rows(base, module)
        want.add((f"{name}.weight", chunk, chunks))
        if kind == "lora-bias":
            want.add((f"{name}.bias", chunk, chunks))
    got = {(t.key, t.chunk, t.chunks) for t in lora.targets} | {(p.key, p.chunk, p.chunks) for p in lora.patches}
    assert got == want
    first = spell(modules[0])
    if kind in PART_OF_KIND:
        (patch,) = [p for p in lora.patches if p.source == modules[0]]
        assert patch.kind == {"loha": "LoHa", "lokr": "LoKr", "oft": "OFT"}[kind]
        part = PART_OF_KIND[kind]
        assert torch.equal(patch.parts[part], tensors[f"{first}.{part}"]) and patch.parts["alpha"].numel() == 1
    else:
        (target,) = [t for t in lora.targets if t.source == modules[0]]
        assert torch.equal(target.up, tensors[f"{first}.lora_up.weight"])
        assert target.scale == float(tensors[f"{first}.alpha"]) / 4
        if kind == "dora":
            assert torch.equal(target.dora_scale, tensors[f"{first}.dora_scale"])


@pytest.mark.parametrize("naming", list(NAMINGS))
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_trained_lora_with_bias_differences_merges_as_the_formula(naming, strength, base, tmp_path):
    tensors = synthetic_file(base, "lora-bias", naming, seed=2)
    merged = merge_lora(base, _save(tmp_path / "trained.safetensors", tensors), strength)
    want = formula_state(base, tensors, "lora-bias", naming, strength)
    for key in base:
        assert max_rel_error(merged[key], want[key]) <= TOL, key
    assert not torch.equal(merged["blocks.0.attn.qkv.bias"], base["blocks.0.attn.qkv.bias"])


@pytest.mark.parametrize("kind", ["loha", "lokr", "oft", "dora"])
def test_merge_refuses_what_only_comfyui_applies(kind, base, tmp_path):
    path = _save(tmp_path / f"{kind}.safetensors", synthetic_file(base, kind, "simpletuner-lycoris"))
    msg = _err(lambda: merge_lora(base, path))
    name = {"loha": "LoHa", "lokr": "LoKr", "oft": "OFT", "dora": "LyCORIS DoRA (dora_scale)"}[kind]
    assert f"{path}: pixart.lora.merge_lora cannot merge {name} ('adaln_single.linear' and 5 more)" in msg
    assert "PixArt Sigma LoRA Loader" in msg


@pytest.mark.parametrize("option", ["lora_bias", "use_dora"])
def test_peft_folders_with_biases_or_dora_equal_peft_merge(option, reference, base, tmp_path):
    targets = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "proj_out", "linear_1", "linear"]
    peft_model = make_peft(reference, targets=targets, **{option: True})
    folder = write_peft_folder(peft_model, tmp_path / option)
    lora = load_lora(folder)
    if option == "lora_bias":
        assert {p.key for p in lora.patches} >= {"blocks.0.attn.qkv.bias", "final_layer.linear.bias"}
    else:
        assert all(t.magnitude is not None for t in lora.targets) and not lora.patches
    want = merged_official(peft_model)
    merged = merge_lora(base, lora)
    half = merge_lora(base, lora, 0.5)
    for key in base:
        assert max_rel_error(merged[key], want[key]) <= TOL, key
        assert max_rel_error(half[key], (base[key] + want[key]) / 2) <= TOL, key  # strength s: W + s (W' - W)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"lycoris_transformer_blocks_0_attn1_to_q.hada_w3_a": torch.zeros(2)}, "hada_w3_a"),
        ({"lycoris_text_encoder_encoder_block_0_q.hada_w1_a": torch.zeros(2, 2)}, "is not a PixArt linear layer"),
        ({"lycoris_transformer_blocks_0_attn1_to_q.rescale": torch.ones(96)}, "OFT rescale is not applied"),
    ],
)
def test_one_stray_key_refuses_the_file_naming_it(extra, named, base, tmp_path):
    tensors = {**synthetic_file(base, "loha", "simpletuner-lycoris"), **extra}
    path = _save(tmp_path / "stray.safetensors", tensors)
    msg = _err(lambda: load_lora(path))
    (key,) = extra
    assert f"{path}: 1 LoRA key problem(s)" in msg and repr(key) in msg and named in msg


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("transformer.proj_out.hada_w2_b"), "'proj_out' is a LoHa update that lacks ['hada_w2_b']"),
        (
            lambda t: t.update({"transformer.proj_out.lokr_w1": torch.ones(2, 2)}),
            "'proj_out' mixes the parts of LoHa and LoKr",
        ),
        (
            lambda t: t.update({"transformer.proj_out.hada_w1_a": torch.ones(32, 3)}),
            "'proj_out' LoHa ranks disagree",
        ),
    ],
)
def test_incomplete_or_mixed_updates(change, message, base, tmp_path):
    tensors = synthetic_file(base, "loha", "diffusers")
    change(tensors)
    assert message in _err(lambda: load_lora(_save(tmp_path / "bad.safetensors", tensors)))


def test_boft_and_orphan_parts(tmp_path):
    boft = {"diffusion_model.blocks.0.attn.qkv.oft_blocks": torch.zeros(2, 3, 4, 4)}
    assert "a BOFT file (not supported)" in _err(lambda: load_lora(_save(tmp_path / "boft.safetensors", boft)))
    orphan = {"diffusion_model.blocks.0.attn.qkv.alpha": torch.tensor(1.0)}
    assert "has only ['alpha']" in _err(lambda: load_lora(_save(tmp_path / "alpha.safetensors", orphan)))
    twice = {
        "blocks.0.attn.qkv.lora_A.weight": torch.zeros(2, 96),
        "blocks.0.attn.qkv.lora_B.weight": torch.zeros(288, 2),
        "blocks.0.attn.qkv.lora_B.bias": torch.zeros(288),
        "blocks.0.attn.qkv.diff_b": torch.zeros(288),
    }
    assert "two updates of one bias" in _err(lambda: load_lora(_save(tmp_path / "twice.safetensors", twice)))


@pytest.mark.parametrize("kind", ["loha", "lokr", "oft", "dora", "lora-bias"])
def test_updates_for_another_width_do_not_fit(kind, base, tmp_path):
    wide = official_state_dict(reference_model(tiny_config(num_heads=2, hidden_size=128), seed=1), tiny_config())
    lora = load_lora(_save(tmp_path / "wide.safetensors", synthetic_file(wide, kind, "comfyui")))
    msg = _err(lambda: check_fit(lora, {k: v.shape for k, v in base.items()}))
    assert "does not fit this model (hidden_size 96" in msg and "'blocks.0.attn.qkv'" in msg
