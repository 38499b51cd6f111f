"""pixart.text_encoder: loading T5 from every layout and dtype, encoding like diffusers, and clear errors."""

from __future__ import annotations

import copy
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import t5_fixtures as fx
import torch
from safetensors.torch import save_file
from transformers import T5TokenizerFast

from pixart.t5.checkpoint import TensorInfo, infer_config
from pixart.t5.fp8 import Fp8Linear
from pixart.text_encoder import SIGMA_MAX_LENGTH, T5Error, T5PromptEncoder, check_caption_width, load_t5

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["A small Cat on the MOUNTAIN at sunset, oil painting", "dog"]
LONG_PROMPT = " ".join(["golden castle in the fog"] * 12)
HAS_FP8 = hasattr(torch, "float8_e4m3fn")
needs_fp8 = pytest.mark.skipif(not HAS_FP8, reason="this torch has no float8 dtypes")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading must never reach for the network (no downloads, no hub lookups)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="session")
def tok_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(spm-only folder, tokenizer.json folder)."""
    return fx.write_tokenizer_dirs(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="session")
def tokenizer(tok_dirs: tuple[Path, Path]) -> T5TokenizerFast:
    return T5TokenizerFast.from_pretrained(str(tok_dirs[1]), local_files_only=True)


@pytest.fixture(scope="session")
def model(tokenizer: T5TokenizerFast):
    return fx.tiny_t5(fx.tiny_config(len(tokenizer)))


def single_file(tmp_path: Path, model, **layout) -> Path:
    return fx.write_single_file(tmp_path / "t5.safetensors", fx.encoder_state(model), **layout)


def assert_matches(encoder: T5PromptEncoder, reference, tokenizer, prompts=PROMPTS, max_length=32, atol=1e-6):
    """Our encode equals transformers' direct forward of ``reference`` on the same tokens."""
    hidden, mask = encoder.encode(prompts, max_length=max_length)
    ref_hidden, ref_mask = fx.reference_encode(reference, tokenizer, prompts, max_length)
    assert hidden.shape == (len(prompts), max_length, encoder.hidden_size)
    assert hidden.dtype == torch.float32 and mask.dtype == torch.int64
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(hidden, ref_hidden, atol=atol, rtol=0)


# --- tokenizer fixture ------------------------------------------------------------------------------------------


def test_trained_tokenizer_has_t5_special_ids(tok_dirs, model):
    for folder in tok_dirs:
        tok = T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
        assert len(tok) <= model.config.vocab_size
        assert tok("a cat").input_ids[-1] == 1


# --- loading: folders and single files ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder_with_sibling_tokenizer", "sharded_with_tokenizer_file", "pipeline_root"])
def test_folder_sources_match_transformers(tmp_path, kind, model, tokenizer, tok_dirs):
    spm_dir, json_dir = tok_dirs
    if kind == "folder_with_sibling_tokenizer":
        fx.write_pipeline_root(model, tmp_path, json_dir)
        encoder = load_t5(tmp_path / "text_encoder", dtype=torch.float32)
    elif kind == "sharded_with_tokenizer_file":
        folder = fx.write_folder(model, tmp_path / "te", max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").is_file()
        encoder = load_t5(folder, tokenizer=spm_dir / "spiece.model", dtype=torch.float32)
    else:
        encoder = load_t5(fx.write_pipeline_root(model, tmp_path, spm_dir), dtype=torch.float32)
    assert_matches(encoder, model, tokenizer)


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
def test_single_file_layouts_match_transformers(tmp_path, layout, model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, model, **layout), tokenizer=tok_dirs[1], dtype=torch.float32)
    assert_matches(encoder, model, tokenizer)
    shared, embed = encoder.model.shared.weight, encoder.model.encoder.embed_tokens.weight
    assert shared.data_ptr() == embed.data_ptr()  # tied, stored once


def test_single_file_config_is_inferred_from_shapes(tmp_path, tokenizer, tok_dirs):
    config = fx.tiny_config(len(tokenizer), d_model=48, num_heads=6, d_kv=16, d_ff=40, num_layers=3)
    model = fx.tiny_t5(config)
    encoder = load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[0], dtype=torch.float32)
    got = encoder.model.config
    for field in ("d_model", "num_heads", "d_kv", "d_ff", "num_layers", "vocab_size", "feed_forward_proj"):
        assert getattr(got, field) == getattr(config, field), field
    assert encoder.hidden_size == 48
    assert_matches(encoder, model, tokenizer)


def test_relu_t5_from_single_file(tmp_path, tokenizer, tok_dirs):
    model = fx.tiny_t5(fx.tiny_config(len(tokenizer), gated=False))
    encoder = load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[1], dtype=torch.float32)
    assert encoder.model.config.feed_forward_proj == "relu"
    assert_matches(encoder, model, tokenizer)


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
def test_half_precision_files_load_exactly_in_fp32(tmp_path, stored, model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, model, dtype=stored), tokenizer=tok_dirs[1], dtype=torch.float32)
    assert_matches(encoder, fx.rounded_copy(model, stored), tokenizer)


def test_bf16_is_the_default_and_returns_float32(tmp_path, model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[1])
    assert encoder.dtype == torch.bfloat16 and encoder.weight_dtype == torch.bfloat16
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}
    assert_matches(encoder, model, tokenizer, atol=0.1)


def test_fp16_keeps_wo_in_fp32_and_survives_overflow(tmp_path, model, tokenizer, tok_dirs):
    """T5 v1.1 feed-forward outputs overflow fp16; transformers keeps ``wo`` in fp32 for that, and so do we."""
    big = copy.deepcopy(model)
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
def test_fp8_files_keep_float8_linear_weights(tmp_path, fp8, scaled, model, tokenizer, tok_dirs):
    fp8_dtype = getattr(torch, fp8)
    stored, reference = fx.fp8_quantize(model, fp8_dtype, scaled)
    path = fx.write_single_file(tmp_path / "t5_fp8.safetensors", stored)
    encoder = load_t5(path, tokenizer=tok_dirs[1], dtype=torch.float32)
    linears = [m for m in encoder.model.modules() if isinstance(m, Fp8Linear)]
    assert len(linears) == 2 * 7 and all(m.weight.dtype == torch.int8 for m in linears)
    assert encoder.weight_dtype == fp8_dtype and encoder.dtype == torch.float32
    assert_matches(encoder, reference, tokenizer, atol=1e-5)
    encoder.model.half()  # a stray cast must not dequantize or touch the float8 bits
    assert all(m.weight.dtype == torch.int8 for m in linears)


@needs_fp8
def test_fp8_storage_with_bf16_and_fp16_compute(tmp_path, model, tokenizer, tok_dirs):
    stored, reference = fx.fp8_quantize(model, torch.float8_e4m3fn, scaled=True)
    path = fx.write_single_file(tmp_path / "t5_fp8.safetensors", stored)
    for dtype in (torch.bfloat16, torch.float16):
        encoder = load_t5(path, tokenizer=tok_dirs[1], dtype=dtype)
        wo = encoder.model.encoder.block[0].layer[1].DenseReluDense.wo
        assert wo.compute_dtype == (torch.float32 if dtype == torch.float16 else dtype)
        assert_matches(encoder, reference, tokenizer, atol=0.1)


@needs_fp8
def test_weight_dtype_quantizes_or_dequantizes(tmp_path, model, tokenizer, tok_dirs):
    reference = fx.fp8_quantize(model, torch.float8_e4m3fn, scaled=False)[1]
    folder = fx.write_folder(model, tmp_path / "te")
    encoder = load_t5(folder, tokenizer=tok_dirs[1], dtype=torch.float32, weight_dtype=torch.float8_e4m3fn)
    assert encoder.weight_dtype == torch.float8_e4m3fn
    assert_matches(encoder, reference, tokenizer, atol=1e-5)
    stored = fx.fp8_quantize(model, torch.float8_e4m3fn, scaled=True)[0]
    path = fx.write_single_file(tmp_path / "t5_fp8.safetensors", stored)
    plain = load_t5(path, tokenizer=tok_dirs[1], dtype=torch.float32, weight_dtype=torch.float32)
    assert not any(isinstance(m, Fp8Linear) for m in plain.model.modules())
    assert plain.weight_dtype == torch.float32


@needs_fp8
def test_fp8_file_on_torch_without_float8(tmp_path, monkeypatch, model, tok_dirs):
    stored = fx.fp8_quantize(model, torch.float8_e4m3fn, scaled=False)[0]
    path = fx.write_single_file(tmp_path / "t5xxl_fp8_e4m3fn.safetensors", stored)
    monkeypatch.delattr(torch, "float8_e4m3fn")  # what an old torch looks like
    monkeypatch.delattr(torch, "float8_e5m2")
    with pytest.raises(T5Error, match="stored as F8_E4M3 .float8. but torch .* has no torch.float8_e4m3fn") as err:
        load_t5(path, tokenizer=tok_dirs[1])
    assert str(path) in str(err.value)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64] + ([torch.float8_e4m3fn] if HAS_FP8 else []))
def test_bad_compute_dtype(tmp_path, dtype, model, tok_dirs):
    with pytest.raises(T5Error, match="not a T5 compute dtype") as err:
        load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[1], dtype=dtype)
    if HAS_FP8 and dtype == torch.float8_e4m3fn:
        assert "weight_dtype=torch.float8_e4m3fn" in str(err.value)


# --- encoding semantics: diffusers parity, truncation, preprocessing ----------------------------------------------


def test_matches_diffusers_encode_prompt(tmp_path, model, tokenizer, tok_dirs):
    diffusers = pytest.importorskip("diffusers")
    pipe = diffusers.PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=model, vae=None, transformer=None, scheduler=None
    )
    encoder = load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[1], dtype=torch.float32)
    cpu = torch.device("cpu")
    for prompts, max_length in ((PROMPTS, SIGMA_MAX_LENGTH), ([LONG_PROMPT, "a dog"], 16)):
        embeds, mask, neg_embeds, neg_mask = pipe.encode_prompt(
            prompts, negative_prompt="", device=cpu, max_sequence_length=max_length
        )
        hidden, our_mask = encoder.encode(prompts, max_length=max_length)
        neg_hidden, our_neg_mask = encoder.encode([""] * len(prompts), max_length=max_length)
        assert torch.equal(our_mask, mask) and torch.equal(our_neg_mask, neg_mask)
        torch.testing.assert_close(hidden, embeds, atol=1e-6, rtol=0)
        torch.testing.assert_close(neg_hidden, neg_embeds, atol=1e-6, rtol=0)
    assert our_neg_mask.sum(dim=1).tolist() == [1, 1]  # "" is just </s>
    assert our_mask[0].all() and our_mask[1].sum() < max_length


def test_truncation_warns_with_dropped_count(tmp_path, caplog, model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[1], dtype=torch.float32)
    total = len(tokenizer(LONG_PROMPT.lower()).input_ids)  # with </s>
    with caplog.at_level(logging.WARNING, logger="pixart.t5.encoder"):
        encoder.encode([LONG_PROMPT, "dog"], max_length=total)  # fits exactly: no warning
        assert not caplog.records
        _, mask = encoder.encode([LONG_PROMPT, "dog"], max_length=total - 5)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "dropped the last 5 tokens" in record.getMessage() and "prompt 0" in record.getMessage()
    assert mask[0].sum() == total - 5


def test_prompts_are_lowercased_and_stripped_like_diffusers(tmp_path, model, tok_dirs):
    encoder = load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[1], dtype=torch.float32)
    upper, _ = encoder.encode("  A Small CAT  ", max_length=16)
    lower, _ = encoder.encode("a small cat", max_length=16)
    assert torch.equal(upper, lower)
    kept, _ = encoder.encode("A Small CAT", max_length=16, lowercase=False)
    assert not torch.equal(kept, lower)


@pytest.mark.parametrize(("prompts", "max_length"), [([], 300), (["ok", 3], 300), ("ok", 0), ("ok", 2.5)])
def test_bad_encode_arguments(tmp_path, prompts, max_length, model, tok_dirs):
    encoder = load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[1], dtype=torch.float32)
    with pytest.raises(ValueError, match="prompts|max_length"):
        encoder.encode(prompts, max_length=max_length)


# --- devices ----------------------------------------------------------------------------------------------------------


def test_offload_device_round_trip(tmp_path, model, tok_dirs):
    encoder = load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[1], device="cpu", offload_device="cpu")
    moves: list[torch.device] = []
    original_to = encoder.model.to

    def spy(device, *args, **kwargs):
        moves.append(torch.device(device))
        return original_to(device, *args, **kwargs)

    encoder.model.to = spy
    hidden, mask = encoder.encode(["a cat"], max_length=8)
    assert moves == [torch.device("cpu"), torch.device("cpu")]  # to the compute device, then back to offload
    assert hidden.device == encoder.output_device == torch.device("cpu") and mask.device == hidden.device
    assert encoder.to("cpu") is encoder and encoder.device == torch.device("cpu")


# --- errors -------------------------------------------------------------------------------------------------------


def test_missing_tokenizer_lists_every_place(tmp_path, model):
    folder = fx.write_folder(model, tmp_path / "text_encoder")
    with pytest.raises(T5Error, match="no T5 tokenizer found") as err:
        load_t5(folder, fallback_tokenizer_dirs=[tmp_path / "comfy_t5_tokenizer"])
    for place in (folder, folder / "tokenizer", tmp_path / "tokenizer", tmp_path / "comfy_t5_tokenizer"):
        assert f"  - {place}\n" in str(err.value)
    with pytest.raises(T5Error, match="nowhere: a single file"):
        load_t5(single_file(tmp_path, model))


def test_single_file_uses_fallback_tokenizer_dirs(tmp_path, model, tokenizer, tok_dirs):
    encoder = load_t5(single_file(tmp_path, model), fallback_tokenizer_dirs=[tmp_path / "nope", tok_dirs[1]])
    assert len(encoder.tokenizer) == len(tokenizer)


def test_explicit_tokenizer_that_is_not_there(tmp_path, model):
    with pytest.raises(T5Error, match="expected a T5 tokenizer.*no such path"):
        load_t5(single_file(tmp_path, model), tokenizer=tmp_path / "missing")


def test_explicit_tokenizer_files(tmp_path, model, tokenizer, tok_dirs):
    renamed = tmp_path / "t5_v1_1.model"
    renamed.write_bytes((tok_dirs[0] / "spiece.model").read_bytes())
    for path in (renamed, tok_dirs[1] / "tokenizer.json"):
        encoder = load_t5(single_file(tmp_path, model), tokenizer=path, dtype=torch.float32)
        assert_matches(encoder, model, tokenizer)
    with pytest.raises(T5Error, match="expected a tokenizer folder, 'tokenizer.json', 'spiece.model'"):
        load_t5(single_file(tmp_path, model), tokenizer=tok_dirs[1] / "tokenizer_config.json")


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


def test_truncated_and_garbage_files(tmp_path, model, tok_dirs):
    data = single_file(tmp_path, model).read_bytes()
    for name, content in (("truncated.safetensors", data[: len(data) // 2]), ("garbage.safetensors", b"not a model")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(T5Error, match="not a readable safetensors file") as err:
            load_t5(path, tokenizer=tok_dirs[1])
        assert str(path) in str(err.value)


def test_wrong_shapes_and_leftover_tensors(tmp_path, model, tok_dirs):
    state = fx.encoder_state(model)
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


def test_bad_paths_and_folders(tmp_path, model, tok_dirs):
    with pytest.raises(T5Error, match="no such file or folder"):
        load_t5(tmp_path / "nothing.safetensors")
    pickle = tmp_path / "t5.bin"
    pickle.write_bytes(b"\x80")
    with pytest.raises(T5Error, match="expected a .safetensors file"):
        load_t5(pickle)
    with pytest.raises(T5Error, match="expected a T5 text-encoder folder"):
        load_t5(tmp_path)
    folder = fx.write_folder(model, tmp_path / "clip")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "clip_text_model"}))
    with pytest.raises(T5Error, match="model_type is 'clip_text_model', expected 't5'"):
        load_t5(folder, tokenizer=tok_dirs[1])
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(T5Error, match=r"expected 'model.safetensors'.*pytorch_model.bin"):
        load_t5(folder, tokenizer=tok_dirs[1])


def test_check_caption_width():
    check_caption_width(4096, 4096)
    with pytest.raises(ValueError, match="T5 hidden size 2048 does not match the DiT's caption channels 4096"):
        check_caption_width(2048, 4096)


# --- benchmark script stays runnable --------------------------------------------------------------------------------


def test_bench_script_smoke():
    cmd = [sys.executable, str(REPO / "scripts" / "bench_t5.py"), "--size", "tiny", "--dtypes", "float32"]
    out = subprocess.run([*cmd, "--repeats", "1", "--batch", "2"], capture_output=True, text=True, check=True)
    (line,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert line["dtype"] == "float32" and line["encode_s"] > 0 and line["load_s"] > 0
