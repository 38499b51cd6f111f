"""pixart.text_encoder, loading: T5 from every layout and dtype (folders, single files, fp8), its tokenizer, and clear
errors for what cannot be loaded."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import t5_fixtures as fx
import torch
from safetensors.torch import save_file
from t5_fixtures import HAS_FP8, PROMPTS, assert_matches, needs_fp8, single_file
from transformers import T5TokenizerFast

from pixart.t5.checkpoint import TensorInfo, infer_config
from pixart.t5.fp8 import Fp8Linear
from pixart.text_encoder import T5Error, load_t5

pytestmark = pytest.mark.usefixtures("no_network")


# --- tokenizer fixture ------------------------------------------------------------------------------------------


def test_trained_tokenizer_has_t5_special_ids(tok_dirs, t5_model):
    for folder in tok_dirs:
        tok = T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
        assert len(tok) <= t5_model.config.vocab_size
        assert tok("a cat").input_ids[-1] == 1


# --- loading: folders and single files ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder_with_sibling_tokenizer", "sharded_with_tokenizer_file", "pipeline_root"])
def test_folder_sources_match_transformers(tmp_path, kind, t5_model, tokenizer, tok_dirs):
    spm_dir, json_dir = tok_dirs
    if kind == "folder_with_sibling_tokenizer":
        fx.write_pipeline_root(t5_model, tmp_path, json_dir)
        encoder = load_t5(tmp_path / "text_encoder", dtype=torch.float32)
    elif kind == "sharded_with_tokenizer_file":
        folder = fx.write_folder(t5_model, tmp_path / "te", max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").is_file()
        encoder = load_t5(folder, tokenizer=spm_dir / "spiece.model", dtype=torch.float32)
    else:
        encoder = load_t5(fx.write_pipeline_root(t5_model, tmp_path, spm_dir), dtype=torch.float32)
    assert_matches(encoder, t5_model, tokenizer)


@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"embed_copy": True},
        {"drop_shared": True},
        {"decoder": True},
        {"bare_stack": True},
        {"prefix": "text_encoders.t5xxl.transformer.", "extra": {"text_encoders.clip_l.w": torch.ones(2)}},
    ],
    ids=["plain", "embed_copy", "embed_tokens_only", "with_decoder", "bare_stack", "bundle_prefix"],
)
def test_single_file_layouts_match_transformers(tmp_path, layout, t5_model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, t5_model, **layout), tokenizer=tok_dirs[1], dtype=torch.float32)
    assert_matches(encoder, t5_model, tokenizer)
    shared, embed = encoder.model.shared.weight, encoder.model.encoder.embed_tokens.weight
    assert shared.data_ptr() == embed.data_ptr()  # tied, stored once


def test_single_file_config_is_inferred_from_shapes(tmp_path, tokenizer, tok_dirs):
    config = fx.tiny_config(len(tokenizer), d_model=48, num_heads=6, d_kv=16, d_ff=40, num_layers=3)
    t5_model = fx.tiny_t5(config)
    encoder = load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[0], dtype=torch.float32)
    got = encoder.model.config
    for field in ("d_model", "num_heads", "d_kv", "d_ff", "num_layers", "vocab_size", "feed_forward_proj"):
        assert getattr(got, field) == getattr(config, field), field
    assert encoder.hidden_size == 48
    assert_matches(encoder, t5_model, tokenizer)


def test_relu_t5_from_single_file(tmp_path, tokenizer, tok_dirs):
    t5_model = fx.tiny_t5(fx.tiny_config(len(tokenizer), gated=False))
    encoder = load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[1], dtype=torch.float32)
    assert encoder.model.config.feed_forward_proj == "relu"
    assert_matches(encoder, t5_model, tokenizer)


@pytest.mark.parametrize(
    ("d_model", "d_ff", "layers", "heads", "vocab"),
    [(4096, 10240, 24, 64, 32128), (2048, 5120, 24, 32, 32128), (768, 2048, 12, 12, 32128)],
    ids=["xxl", "xl", "base"],
)
def test_real_t5_sizes_inferred_from_header(d_model, d_ff, layers, heads, vocab):
    file, p = Path("t5xxl.safetensors"), "encoder.block"
    header = {
        "shared.weight": (vocab, d_model),
        f"{p}.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, heads),
    }
    for i in range(layers):
        header[f"{p}.{i}.layer.0.SelfAttention.q.weight"] = (heads * 64, d_model)
        header[f"{p}.{i}.layer.1.DenseReluDense.wi_0.weight"] = (d_ff, d_model)
    tensors = {key: TensorInfo(file, "BF16", shape) for key, shape in header.items()}
    config = infer_config(file, tensors, "encoder.", "")
    assert (config.d_model, config.d_ff, config.num_layers, config.num_heads, config.d_kv) == (
        d_model,
        d_ff,
        layers,
        heads,
        64,
    )
    assert (config.vocab_size, config.feed_forward_proj, config.dense_act_fn) == (vocab, "gated-gelu", "gelu_new")


# --- precision ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_exactly_in_fp32(tmp_path, stored, t5_model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, t5_model, dtype=stored), tokenizer=tok_dirs[1], dtype=torch.float32)
    assert_matches(encoder, fx.rounded_copy(t5_model, stored), tokenizer)


def test_bf16_is_the_default_and_returns_float32(tmp_path, t5_model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[1])
    assert encoder.dtype == torch.bfloat16 and encoder.weight_dtype == torch.bfloat16
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}
    assert_matches(encoder, t5_model, tokenizer, atol=0.1)


def test_fp16_keeps_wo_in_fp32_and_survives_overflow(tmp_path, t5_model, tokenizer, tok_dirs):
    """T5 v1.1 feed-forward outputs overflow fp16; transformers keeps ``wo`` in fp32 for that, and so do we."""
    big = copy.deepcopy(t5_model)
    for block in big.encoder.block:
        block.layer[1].DenseReluDense.wo.weight.data *= 3e4  # FF outputs ~1e5 > 65504, the fp16 maximum
    encoder = load_t5(single_file(tmp_path, big), tokenizer=tok_dirs[1], dtype=torch.float16)
    dtypes = {name: p.dtype for name, p in encoder.model.named_parameters()}
    assert {d for n, d in dtypes.items() if n.endswith("DenseReluDense.wo.weight")} == {torch.float32}
    assert {d for n, d in dtypes.items() if not n.endswith("DenseReluDense.wo.weight")} == {torch.float16}
    reference, _ = fx.reference_encode(big, tokenizer, PROMPTS, 32)
    naive, _ = fx.reference_encode(copy.deepcopy(big).half(), tokenizer, PROMPTS, 32)
    hidden, _ = encoder.encode(PROMPTS, max_length=32)
    assert (naive - reference).abs().max() > 0.1  # the premise: all-fp16 T5 goes wrong
    torch.testing.assert_close(hidden, reference, atol=0.02, rtol=0)


@needs_fp8
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "scaled"])
@pytest.mark.parametrize("fp8", ["float8_e4m3fn", "float8_e5m2"])
def test_fp8_files_keep_float8_linear_weights(tmp_path, fp8, scaled, t5_model, tokenizer, tok_dirs):
    fp8_dtype = getattr(torch, fp8)
    stored, reference = fx.fp8_quantize(t5_model, fp8_dtype, scaled)
    path = fx.write_single_file(tmp_path / "t5_fp8.safetensors", stored)
    encoder = load_t5(path, tokenizer=tok_dirs[1], dtype=torch.float32)
    linears = [m for m in encoder.model.modules() if isinstance(m, Fp8Linear)]
    assert len(linears) == 2 * 7 and all(m.weight.dtype == torch.int8 for m in linears)
    assert encoder.weight_dtype == fp8_dtype and encoder.dtype == torch.float32
    assert_matches(encoder, reference, tokenizer, atol=1e-5)
    encoder.model.half()  # a stray cast must not dequantize or touch the float8 bits
    assert all(m.weight.dtype == torch.int8 for m in linears)


@needs_fp8
def test_fp8_storage_with_bf16_and_fp16_compute(tmp_path, t5_model, tokenizer, tok_dirs):
    stored, reference = fx.fp8_quantize(t5_model, torch.float8_e4m3fn, scaled=True)
    path = fx.write_single_file(tmp_path / "t5_fp8.safetensors", stored)
    for dtype in (torch.bfloat16, torch.float16):
        encoder = load_t5(path, tokenizer=tok_dirs[1], dtype=dtype)
        wo = encoder.model.encoder.block[0].layer[1].DenseReluDense.wo
        assert wo.compute_dtype == (torch.float32 if dtype == torch.float16 else dtype)
        assert_matches(encoder, reference, tokenizer, atol=0.1)


@needs_fp8
def test_weight_dtype_quantizes_or_dequantizes(tmp_path, t5_model, tokenizer, tok_dirs):
    reference = fx.fp8_quantize(t5_model, torch.float8_e4m3fn, scaled=False)[1]
    folder = fx.write_folder(t5_model, tmp_path / "te")
    encoder = load_t5(folder, tokenizer=tok_dirs[1], dtype=torch.float32, weight_dtype=torch.float8_e4m3fn)
    assert encoder.weight_dtype == torch.float8_e4m3fn
    assert_matches(encoder, reference, tokenizer, atol=1e-5)
    stored = fx.fp8_quantize(t5_model, torch.float8_e4m3fn, scaled=True)[0]
    path = fx.write_single_file(tmp_path / "t5_fp8.safetensors", stored)
    plain = load_t5(path, tokenizer=tok_dirs[1], dtype=torch.float32, weight_dtype=torch.float32)
    assert not any(isinstance(m, Fp8Linear) for m in plain.model.modules())
    assert plain.weight_dtype == torch.float32


@needs_fp8
def test_fp8_file_on_torch_without_float8(tmp_path, monkeypatch, t5_model, tok_dirs):
    stored = fx.fp8_quantize(t5_model, torch.float8_e4m3fn, scaled=False)[0]
    path = fx.write_single_file(tmp_path / "t5xxl_fp8_e4m3fn.safetensors", stored)
    monkeypatch.delattr(torch, "float8_e4m3fn")  # what an old torch looks like
    monkeypatch.delattr(torch, "float8_e5m2")
    with pytest.raises(T5Error, match="stored as F8_E4M3 .float8. but torch .* has no torch.float8_e4m3fn") as err:
        load_t5(path, tokenizer=tok_dirs[1])
    assert str(path) in str(err.value)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64] + ([torch.float8_e4m3fn] if HAS_FP8 else []))
def test_bad_compute_dtype(tmp_path, dtype, t5_model, tok_dirs):
    with pytest.raises(T5Error, match="not a T5 compute dtype") as err:
        load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[1], dtype=dtype)
    if HAS_FP8 and dtype == torch.float8_e4m3fn:
        assert "weight_dtype=torch.float8_e4m3fn" in str(err.value)


# --- errors -------------------------------------------------------------------------------------------------------


def test_missing_tokenizer_lists_every_place(tmp_path, t5_model):
    folder = fx.write_folder(t5_model, tmp_path / "text_encoder")
    with pytest.raises(T5Error, match="no T5 tokenizer found") as err:
        load_t5(folder, fallback_tokenizer_dirs=[tmp_path / "comfy_t5_tokenizer"])
    for place in (folder, folder / "tokenizer", tmp_path / "tokenizer", tmp_path / "comfy_t5_tokenizer"):
        assert f"  - {place}\n" in str(err.value)
    with pytest.raises(T5Error, match="nowhere: a single file"):
        load_t5(single_file(tmp_path, t5_model))


def test_single_file_uses_fallback_tokenizer_dirs(tmp_path, t5_model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, t5_model), fallback_tokenizer_dirs=[tmp_path / "nope", tok_dirs[1]])
    assert len(encoder.tokenizer) == len(tokenizer)


def test_explicit_tokenizer_that_is_not_there(tmp_path, t5_model):
    with pytest.raises(T5Error, match="expected a T5 tokenizer.*no such path"):
        load_t5(single_file(tmp_path, t5_model), tokenizer=tmp_path / "missing")


def test_explicit_tokenizer_files(tmp_path, t5_model, tokenizer, tok_dirs):
    renamed = tmp_path / "t5_v1_1.model"
    renamed.write_bytes((tok_dirs[0] / "spiece.model").read_bytes())
    for path in (renamed, tok_dirs[1] / "tokenizer.json"):
        encoder = load_t5(single_file(tmp_path, t5_model), tokenizer=path, dtype=torch.float32)
        assert_matches(encoder, t5_model, tokenizer)
    with pytest.raises(T5Error, match="expected a tokenizer folder, 'tokenizer.json', 'spiece.model'"):
        load_t5(single_file(tmp_path, t5_model), tokenizer=tok_dirs[1] / "tokenizer_config.json")


def test_tokenizer_too_big_for_the_model(tmp_path, tokenizer, tok_dirs):
    small = fx.tiny_t5(fx.tiny_config(64))
    with pytest.raises(T5Error, match=f"has {len(tokenizer)} tokens but the T5 .* embeds only 64"):
        load_t5(single_file(tmp_path, small), tokenizer=tok_dirs[1])


def test_unet_like_file_is_not_a_t5(tmp_path, tok_dirs):
    path = tmp_path / "unet.safetensors"
    save_file({"input_blocks.0.0.weight": torch.ones(4, 4, 3, 3), "out.2.bias": torch.ones(4)}, str(path))
    with pytest.raises(T5Error, match="not a T5 text encoder") as err:
        load_t5(path, tokenizer=tok_dirs[1])
    assert str(path) in str(err.value) and "input_blocks.0.0.weight" in str(err.value)


def test_truncated_and_garbage_files(tmp_path, t5_model, tok_dirs):
    data = single_file(tmp_path, t5_model).read_bytes()
    for name, content in (
        ("truncated.safetensors", data[: len(data) // 2]),
        ("garbage.safetensors", b"not a model"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(T5Error, match="not a readable safetensors file") as err:
            load_t5(path, tokenizer=tok_dirs[1])
        assert str(path) in str(err.value)


def test_wrong_shapes_and_leftover_tensors(tmp_path, t5_model, tok_dirs):
    state = fx.encoder_state(t5_model)
    bad = dict(state, **{"encoder.block.1.layer.0.SelfAttention.k.weight": torch.ones(16, 32)})
    path = fx.write_single_file(tmp_path / "bad_shape.safetensors", bad)
    with pytest.raises(T5Error, match=r"'encoder.block.1.layer.0.SelfAttention.k.weight' is \(16, 32\), expected"):
        load_t5(path, tokenizer=tok_dirs[1])
    extra = dict(state, **{"encoder.block.0.layer.0.SelfAttention.extra.weight": torch.ones(2)})
    path = fx.write_single_file(tmp_path / "extra.safetensors", extra)
    with pytest.raises(T5Error, match="do not belong to a T5 encoder.*SelfAttention.extra.weight"):
        load_t5(path, tokenizer=tok_dirs[1])
    del state["encoder.final_layer_norm.weight"]
    path = fx.write_single_file(tmp_path / "missing.safetensors", state)
    with pytest.raises(T5Error, match="missing 1 T5 encoder tensors.*final_layer_norm"):
        load_t5(path, tokenizer=tok_dirs[1])


def test_bad_paths_and_folders(tmp_path, t5_model, tok_dirs):
    with pytest.raises(T5Error, match="no such file or folder"):
        load_t5(tmp_path / "nothing.safetensors")
    pickle = tmp_path / "t5.bin"
    pickle.write_bytes(b"\x80")
    with pytest.raises(T5Error, match="expected a .safetensors file"):
        load_t5(pickle)
    with pytest.raises(T5Error, match="expected a T5 text-encoder folder"):
        load_t5(tmp_path)
    folder = fx.write_folder(t5_model, tmp_path / "clip")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "clip_text_model"}))
    with pytest.raises(T5Error, match="model_type is 'clip_text_model', expected 't5'"):
        load_t5(folder, tokenizer=tok_dirs[1])
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(T5Error, match=r"expected 'model.safetensors'.*pytorch_model.bin"):
        load_t5(folder, tokenizer=tok_dirs[1])
