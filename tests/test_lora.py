"""pixart.lora: every LoRA naming gives PEFT's result on the diffusers reference; bad LoRAs stop with clear errors.

Ground truth: a LoRA injected with PEFT into diffusers' PixArtTransformer2DModel (its forward, and its
``merge_and_unload`` weights converted to official names). fp32, relative error <= 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch
from dit_fixtures import inputs, max_rel_error, official_state_dict, reference_forward, reference_model, tiny_config
from safetensors.torch import save_file

from pixart import PixArtTransformer
from pixart.lora import Lora, LoraError, PeftSettings, check_fit, load_lora, merge_lora, parse_lora

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from lora_fixtures import (  # noqa: E402 (needs peft)
    WRITERS,
    lora_scales,
    lora_state,
    make_peft,
    merged_official,
    random_lora,
    write_adapter_folder,
    write_diffusers,
    write_kohya,
    write_official_keys,
    write_peft_folder,
)

TOL = 1e-5


def assert_state_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        assert max_rel_error(got[key], want[key]) <= TOL, key


@pytest.fixture(scope="module")
def config():
    return tiny_config()


@pytest.fixture(scope="module")
def reference(config):
    return reference_model(config)


@pytest.fixture(scope="module")
def base(reference, config):
    return official_state_dict(reference, config, training_extras=False)


@pytest.fixture(scope="module")
def peft_model(reference):
    """r=4, alpha=8 (scale 2), with per-module overrides: ff.net.2 rank 2 (scale 4), attn2.to_k alpha 2 (0.5)."""
    return make_peft(reference, rank_pattern={"ff.net.2": 2}, alpha_pattern={"attn2.to_k": 2})


@pytest.fixture(scope="module")
def files(peft_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return {name: write(peft_model, folder) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def want(peft_model):
    return merged_official(peft_model)


def ours(config, state_dict) -> PixArtTransformer:
    model = PixArtTransformer(config).eval()
    model.load_state_dict(state_dict)
    return model


# (a) every naming equals PEFT on diffusers ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_merged_weights_equal_peft_merge(fmt, files, base, want):
    assert_state_close(merge_lora(base, files[fmt]), want)


@pytest.mark.parametrize("fmt", ["peft-folder", "official-script", "diffusers", "kohya", "official-keys"])
def test_forward_equals_diffusers_with_peft_lora(fmt, files, base, config, peft_model):
    x, t, y, mask = inputs(config, 32, 48)
    with torch.no_grad():
        got = ours(config, merge_lora(base, files[fmt]))(x, t, y, mask)
    want = reference_forward(peft_model.get_base_model(), x, t, y, mask)
    assert max_rel_error(got, want) <= TOL


def test_targets_cover_every_module_kind(files):
    lora = load_lora(files["peft-folder"])
    keys = set(lora.keys)
    for key in ["x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight", "t_block.1.weight"]:
        assert key in keys
    for key in ["y_embedder.y_proj.fc1.weight", "y_embedder.y_proj.fc2.weight", "final_layer.linear.weight"]:
        assert key in keys
    fused = {(t.key, t.rows) for t in lora.targets if t.chunks > 1}
    assert ("blocks.1.attn.qkv.weight", (192, 288)) in fused  # v rows of a width-96 model
    assert ("blocks.0.cross_attn.kv_linear.weight", (0, 96)) in fused
    scales = {t.source: t.scale for t in lora.targets}
    assert scales["transformer_blocks.0.attn1.to_q"] == 2.0
    assert scales["transformer_blocks.0.ff.net.2"] == 4.0  # rank_pattern
    assert scales["transformer_blocks.1.attn2.to_k"] == 0.5  # alpha_pattern


def test_official_script_file_takes_alpha_from_the_adapter_beside_it(files, tmp_path, base, want):
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes(files["official-script"].read_bytes())
    lora = load_lora(alone)
    assert {t.scale for t in lora.targets} == {1.0}  # no alpha anywhere: scale 1, as the file alone says
    assert_state_close(merge_lora(base, files["official-script"]), want)


def _processor_name(key: str) -> str:
    """Old attention-processor naming: ``attn1.processor.to_q_lora.down.weight`` (attention modules only)."""
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        for old, new in (("lora_A", "down"), ("lora_B", "up")):
            short = proj.removesuffix(".0")
            key = key.replace(f".{proj}.{old}.weight", f".processor.{short}_lora.{new}.weight")
    return key


NAMINGS = {
    "peft-default-adapter": lambda k: k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
        ".lora_B.weight", ".lora_B.default.weight"
    ),
    "attention-processor": _processor_name,
    "unet-peft-prefix": lambda k: "unet.base_model.model." + k,
    "kohya-transformer-prefix": lambda k: (
        "lora_transformer_"
        + k.replace(".lora_", "#")
        .replace(".", "_")
        .replace("#A_weight", ".lora_down.weight")
        .replace("#B_weight", ".lora_up.weight")
    ),
}


@pytest.mark.parametrize("naming", list(NAMINGS))
def test_other_namings(naming, peft_model, base, want):
    scales = {t.source: t.scale for t in load_lora_state(peft_model).targets}
    state = {}
    for key, tensor in lora_state(peft_model).items():
        module = key.rsplit(".lora_", 1)[0]
        state[NAMINGS[naming](key)] = tensor * scales[module] if ".lora_B." in key else tensor  # no alpha: fold
    assert_state_close(merge_lora(base, parse_lora(state, naming)), want)


def load_lora_state(peft_model) -> Lora:
    config = peft_model.peft_config["default"]
    settings = PeftSettings.from_dict(config.to_dict(), "config")
    return parse_lora(lora_state(peft_model), "peft", settings)


def test_hand_written_adapter_equals_fused_official_file(base, tmp_path):
    state = random_lora(base, rank=3, seed=4)
    folder = write_adapter_folder(state, r=3, lora_alpha=6, folder=tmp_path / "adapter")
    official = write_official_keys(state, {k.rsplit(".lora_", 1)[0]: 2.0 for k in state}, tmp_path / "o.safetensors")
    assert len(load_lora(folder).targets) == 27 and len(load_lora(official).targets) == 21
    assert_state_close(merge_lora(base, folder), merge_lora(base, official))


# (b) strength ---------------------------------------------------------------------------------------------------


def test_strength_zero_is_the_base_model(files, base):
    merged = merge_lora(base, files["diffusers"], strength=0.0)
    assert all(torch.equal(merged[k], base[k]) for k in base)


@pytest.mark.parametrize("strength", [0.5, -1.0, 3.0])
def test_strength_scales_the_update(strength, files, base, want):
    merged = merge_lora(base, files["kohya"], strength=strength)
    assert_state_close(merged, {k: base[k] + strength * (want[k] - base[k]) for k in base})


# (c) stacking ---------------------------------------------------------------------------------------------------


def test_two_stacked_loras_equal_the_sum_of_their_updates(reference, files, base, want, tmp_path):
    second = make_peft(reference, seed=9, targets=["to_q", "to_v", "proj_out"], r=2, lora_alpha=2)
    path = write_kohya(lora_state(second), lora_scales(second), tmp_path / "second.safetensors")
    want_second = merged_official(second)
    stacked = merge_lora(merge_lora(base, files["peft-folder"], 0.7), path, -0.5)
    expected = {k: base[k] + 0.7 * (want[k] - base[k]) - 0.5 * (want_second[k] - base[k]) for k in base}
    assert_state_close(stacked, expected)


# (d) the input is never changed: dropping the merged dict is unloading --------------------------------------------


def test_merge_leaves_the_base_untouched(files, base):
    before = {k: v.clone() for k, v in base.items()}
    merged = merge_lora(base, files["peft-folder"])
    merged["blocks.0.attn.qkv.weight"].add_(1.0)
    assert all(torch.equal(base[k], before[k]) for k in base)
    assert merged["blocks.0.scale_shift_table"] is base["blocks.0.scale_shift_table"]  # untouched: shared


def test_half_precision_weights_keep_their_dtype(files, base, want):
    half = {k: v.half() for k, v in base.items()}
    merged = merge_lora(half, files["peft-folder"])
    assert merged["blocks.0.attn.qkv.weight"].dtype == torch.float16
    assert max_rel_error(merged["blocks.0.attn.qkv.weight"].float(), want["blocks.0.attn.qkv.weight"]) < 2e-3


# (e) errors -----------------------------------------------------------------------------------------------------


def _save(path, tensors):
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path))
    return path


def _err(path_or_lora, base=None) -> str:
    with pytest.raises(LoraError) as info:
        lora = path_or_lora if isinstance(path_or_lora, Lora) else load_lora(path_or_lora)
        if base is not None:
            check_fit(lora, {k: v.shape for k, v in base.items()})
    return str(info.value)


def test_lora_matching_nothing(tmp_path):
    path = _save(tmp_path / "sdxl.safetensors", {"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 8)})
    msg = _err(path)
    assert str(path) in msg and "lora_unet_down_blocks_0.lora_down.weight" in msg and "not a PixArt" in msg


def test_keys_that_match_nothing_are_listed(peft_model, tmp_path):
    state = {f"transformer.{k}": v for k, v in lora_state(peft_model).items()}
    state["text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"] = torch.zeros(4, 8)
    state["transformer.transformer_blocks.0.attn1.to_q.lora_mid.weight"] = torch.zeros(4, 4, 1, 1)
    msg = _err(_save(tmp_path / "mixed.safetensors", state))
    assert "2 LoRA key problem(s)" in msg and "mixed.safetensors" in msg
    assert "text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight" in msg
    assert "LoCon/Tucker mid weights (convolutions) are not supported" in msg


def test_missing_half_and_rank_mismatch(tmp_path):
    path = _save(
        tmp_path / "broken.safetensors",
        {
            "transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 96),
            "transformer_blocks.0.attn1.to_k.lora_A.weight": torch.zeros(4, 96),
            "transformer_blocks.0.attn1.to_k.lora_B.weight": torch.zeros(96, 8),
        },
    )
    msg = _err(path)
    assert "'transformer_blocks.0.attn1.to_q' has ['down'] but needs both" in msg
    assert "has rank 4, up (96, 8) has 8" in msg


def test_lora_for_a_wider_model(tmp_path, base):
    wide = reference_model(tiny_config(num_heads=2, hidden_size=128), seed=1)
    path = write_peft_folder(make_peft(wide, targets=["to_q", "ff.net.2"]), tmp_path / "wide")
    msg = _err(path, base)
    assert f"{path}: does not fit this model (hidden_size 96, 2 blocks; the LoRA has hidden_size 128, " in msg
    assert "blocks.0.attn.qkv.weight (288, 96) (fused part 1 of 3) needs up (96, r) / down (r, 96)" in msg
    assert "up (128, 4) / down (4, 128)" in msg


def test_lora_for_blocks_the_model_lacks(peft_model, tmp_path, base):
    state = {k.replace("transformer_blocks.1.", "transformer_blocks.5."): v for k, v in lora_state(peft_model).items()}
    msg = _err(parse_lora(state, "deep.safetensors"), base)
    assert "deep.safetensors: does not fit" in msg and "blocks.5.attn.qkv.weight, which this model does not have" in msg


def test_micro_condition_lora_on_a_sigma_model(tmp_path, base):
    alpha_model = reference_model(tiny_config(micro=True), seed=2)
    lora = make_peft(alpha_model, targets=["linear_1"])
    path = write_kohya(lora_state(lora), lora_scales(lora), tmp_path / "alpha.safetensors")
    msg = _err(path, base)
    assert "csize_embedder.mlp.0.weight, which this model does not have" in msg


def test_same_module_twice(peft_model, tmp_path):
    state = lora_state(peft_model)
    doubled = {**state, **{f"transformer.{k}": v for k, v in state.items() if "blocks.0.attn1.to_q" in k}}
    msg = _err(_save(tmp_path / "twice.safetensors", doubled))
    assert "a second down tensor for 'transformer_blocks.0.attn1.to_q'" in msg


def test_peft_config_rank_disagrees_with_weights(peft_model, tmp_path):
    folder = write_peft_folder(peft_model, tmp_path / "bad_rank")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["rank_pattern"] = {}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert "says r=4 for 'transformer_blocks.0.ff.net.2' but its lora_A/lora_B have rank 2" in _err(folder)


@pytest.mark.parametrize(
    "change,message",
    [({"use_dora": "yes"}, "use_dora"), ({"peft_type": "LOHA"}, "PEFT type 'LOHA' is not supported")],
)
def test_unsupported_peft_configs(change, message, peft_model, tmp_path):
    folder = write_peft_folder(peft_model, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
    msg = _err(folder)
    assert message in msg and "adapter_config.json" in msg


def test_unreadable_inputs(tmp_path):
    assert "no such LoRA file or folder" in _err(tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("hi")
    assert "unknown LoRA file type '.txt'" in _err(tmp_path / "notes.txt")
    (tmp_path / "folder").mkdir()
    assert "not a PEFT adapter folder" in _err(tmp_path / "folder")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    assert "not a readable safetensors file" in _err(tmp_path / "junk.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    assert "expected a flat dict of tensors, found list" in _err(tmp_path / "list.pt")
    torch.save({"a.lora_A.weight": torch.zeros(1), "cfg": object()}, tmp_path / "object.pt")
    msg = _err(tmp_path / "object.pt")
    assert "object.pt: not a readable PyTorch checkpoint: it holds a pickled object" in msg
    assert "weights_only" not in msg
    empty = _save(tmp_path / "empty.safetensors", {})
    assert f"{empty}: holds no tensors" in _err(empty)


def test_metadata_settings_are_used(peft_model, tmp_path, base, want):
    path = write_diffusers(peft_model, tmp_path)
    scales = {t.source: t.scale for t in load_lora(path).targets}
    assert scales["transformer_blocks.1.ff.net.2"] == 4.0 and scales["transformer_blocks.0.attn2.to_k"] == 0.5
