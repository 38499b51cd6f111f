"""Tiny T5 encoders, a sentencepiece tokenizer trained on the spot, and every file layout ``load_t5`` reads.

Nothing here is downloaded: the tokenizer is trained on a generated corpus with T5's special ids (pad 0, eos 1,
unk 2, no bos) and wrapped as a transformers T5 tokenizer, which adds the 100 ``<extra_id_*>`` sentinels; the model
embedding is padded to a multiple of 8 rows, like T5 v1.1's 32100 tokens / 32128 rows.
"""

from __future__ import annotations

import copy
import io
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

WORDS = (
    "a an the of on in with and photo painting portrait of cat dog bird woman man child city street river mountain",
    "forest sky cloud sunset night light dark red blue green golden small large bright cinematic detailed lens 35mm",
    "watercolor oil neon rain snow fog castle robot dragon flower garden ocean wave boat bridge tower",
)


def corpus(lines: int = 3000, seed: int = 0) -> list[str]:
    """Random captions over ``WORDS``, plus a few lines with capitals, digits and accents."""
    rng = random.Random(seed)
    words = " ".join(WORDS).split()
    text = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 16))) for _ in range(lines)]
    return [*text, "The Quick Brown Fox jumps over 12345 lazy Dogs!?", "café naïve über, déjà vu: 42%"]


def train_spiece(path: Path, vocab_size: int = 100) -> Path:
    """Train a unigram sentencepiece model with T5's ids (pad 0, eos 1, unk 2, no bos) and write it to ``path``."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def write_tokenizer_dirs(root: Path) -> tuple[Path, Path]:
    """Two tokenizer folders: ``spm/`` (only ``spiece.model``, like PixArt's diffusers ``tokenizer/``) and
    ``json/`` (``tokenizer.json`` + ``tokenizer_config.json``, like ComfyUI's ``t5_tokenizer``)."""
    spm_dir, json_dir = root / "spm", root / "json"
    train_spiece(spm_dir / "spiece.model")
    T5TokenizerFast.from_pretrained(str(spm_dir), local_files_only=True).save_pretrained(str(json_dir))
    return spm_dir, json_dir


def tiny_config(vocab_size: int, gated: bool = True, **sizes: int) -> T5Config:
    """A T5 config with d_model 32, 4 heads of 8, d_ff 64, 2 layers (override with ``sizes``)."""
    vocab_rows = -(-vocab_size // 8) * 8  # padded like T5 v1.1 (32100 tokens -> 32128 rows)
    base = {"d_model": 32, "num_heads": 4, "d_kv": 8, "d_ff": 64, "num_layers": 2}
    return T5Config(
        vocab_size=vocab_rows,
        feed_forward_proj="gated-gelu" if gated else "relu",
        is_encoder_decoder=False,
        use_cache=False,
        **{**base, **sizes},
    )


def tiny_t5(config: T5Config, seed: int = 0) -> T5EncoderModel:
    """A randomly initialised T5 encoder in eval mode (fp32)."""
    torch.manual_seed(seed)
    return T5EncoderModel(copy.deepcopy(config)).eval().requires_grad_(False)


def encoder_state(model: T5EncoderModel) -> dict[str, Tensor]:
    """``shared.weight`` + ``encoder.*`` without the tied ``encoder.embed_tokens.weight`` copy, as contiguous clones."""
    state = model.state_dict()
    return {k: v.clone().contiguous() for k, v in state.items() if k != "encoder.embed_tokens.weight"}


def is_linear_key(model: nn.Module, key: str) -> bool:
    """True if ``key`` is the weight of an ``nn.Linear`` of ``model``."""
    module = key.removesuffix(".weight")
    return any(name == module and isinstance(m, nn.Linear) for name, m in model.named_modules())


def fp8_quantize(model: T5EncoderModel, fp8: torch.dtype, scaled: bool) -> tuple[dict[str, Tensor], T5EncoderModel]:
    """Linear weights rounded to ``fp8`` (optionally with ComfyUI per-tensor ``scale_weight``s).

    Returns:
        stored: file tensors (float8 Linear weights, scales, fp32 rest; ``scaled_fp8`` marker when scaled).
        reference: a copy of ``model`` whose Linear weights are the dequantized float8 values (fp32).
    """
    stored, reference = encoder_state(model), copy.deepcopy(model)
    ref_state = reference.state_dict()
    for key in list(stored):
        if not is_linear_key(model, key):
            continue
        weight = stored[key]
        scale = weight.abs().max() / torch.finfo(fp8).max if scaled else torch.tensor(1.0)
        bits = (weight / scale).to(fp8)
        stored[key] = bits
        ref_state[key].copy_(bits.to(torch.float32) * scale)
        if scaled:
            stored[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(()).to(torch.float32)
    if scaled:
        stored["scaled_fp8"] = torch.zeros(0, dtype=fp8)
        stored["encoder.block.0.layer.0.SelfAttention.q.scale_input"] = torch.ones(())
    return stored, reference


def rounded_copy(model: T5EncoderModel, dtype: torch.dtype) -> T5EncoderModel:
    """A fp32 copy of ``model`` whose weights went through ``dtype`` (what a file stored in ``dtype`` holds)."""
    reference = copy.deepcopy(model)
    for param in reference.parameters():
        param.data = param.data.to(dtype).to(torch.float32)
    return reference


def write_single_file(
    path: Path,
    state: dict[str, Tensor],
    dtype: torch.dtype | None = None,
    prefix: str = "",
    embed_copy: bool = False,
    drop_shared: bool = False,
    decoder: bool = False,
    bare_stack: bool = False,
    extra: dict[str, Tensor] | None = None,
) -> Path:
    """Write an encoder state dict as one ComfyUI-style safetensors file, in one of its layout variants.

    Args:
        dtype: cast floating tensors that are not float8 to this dtype (None keeps them).
        prefix: prepended to every T5 key (e.g. "text_encoders.t5xxl.transformer.").
        embed_copy: also store ``encoder.embed_tokens.weight`` (a copy of ``shared.weight``).
        drop_shared: store the embedding only as ``encoder.embed_tokens.weight``.
        decoder: add a few decoder tensors and ``lm_head.weight`` (a full encoder-decoder file).
        bare_stack: keys without ``encoder.`` (``block.0...``, ``embed_tokens.weight``, ``final_layer_norm.weight``).
        extra: more tensors, stored as given (e.g. another model of a bundle).
    """
    out = {k: (v.to(dtype) if dtype is not None and v.dtype.itemsize > 1 else v) for k, v in state.items()}
    shared = out["shared.weight"]
    if embed_copy or drop_shared or bare_stack:
        out["encoder.embed_tokens.weight"] = shared.clone()
    if drop_shared or bare_stack:
        del out["shared.weight"]
    if decoder:
        width = shared.shape[1]
        out["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.randn(width, width)
        out["decoder.final_layer_norm.weight"] = torch.ones(width)
        out["lm_head.weight"] = torch.randn_like(shared)
    if bare_stack:
        out = {k.removeprefix("encoder."): v for k, v in out.items()}
    out = {prefix + k: v for k, v in out.items()}
    out.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    return path


def write_folder(model: T5EncoderModel, folder: Path, max_shard_size: str | None = None) -> Path:
    """``save_pretrained`` layout: ``config.json`` + ``model.safetensors`` (or shards + index)."""
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(folder), **kwargs)
    return folder


def write_pipeline_root(model: T5EncoderModel, root: Path, tokenizer_dir: Path) -> Path:
    """A diffusers pipeline folder with ``text_encoder/`` (sharded) and ``tokenizer/``."""
    write_folder(model, root / "text_encoder", max_shard_size="20KB")
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    for file in tokenizer_dir.iterdir():
        (root / "tokenizer" / file.name).write_bytes(file.read_bytes())
    return root


def reference_encode(
    model: T5EncoderModel, tokenizer: T5TokenizerFast, prompts: list[str], max_length: int
) -> tuple[Tensor, Tensor]:
    """transformers' direct forward on diffusers-style tokens: (B, L, C) fp32 hidden states, (B, L) int64 mask."""
    batch = tokenizer(
        [p.lower().strip() for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return hidden.float(), batch["attention_mask"]


PROMPTS = ["A small Cat on the MOUNTAIN at sunset, oil painting", "dog"]
LONG_PROMPT = " ".join(["golden castle in the fog"] * 12)
HAS_FP8 = hasattr(torch, "float8_e4m3fn")
needs_fp8 = pytest.mark.skipif(not HAS_FP8, reason="this torch has no float8 dtypes")


def single_file(tmp_path: Path, model: T5EncoderModel, **layout) -> Path:
    """``model``'s encoder weights as one ``t5.safetensors`` in ``tmp_path`` (layout: see ``write_single_file``)."""
    return write_single_file(tmp_path / "t5.safetensors", encoder_state(model), **layout)


def assert_matches(encoder, reference, tokenizer, prompts=PROMPTS, max_length=32, atol=1e-6):
    """Our encode (a ``T5PromptEncoder``) equals transformers' direct forward of ``reference`` on the same tokens."""
    hidden, mask = encoder.encode(prompts, max_length=max_length)
    ref_hidden, ref_mask = reference_encode(reference, tokenizer, prompts, max_length)
    assert hidden.shape == (len(prompts), max_length, encoder.hidden_size)
    assert hidden.dtype == torch.float32 and mask.dtype == torch.int64
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(hidden, ref_hidden, atol=atol, rtol=0)
