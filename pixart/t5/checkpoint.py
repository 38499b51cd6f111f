"""Where a T5 encoder's tensors sit in safetensors files, and the ``T5Config`` their shapes imply.

Reads headers only (names, dtypes, shapes); :mod:`.loading` reads the data. Two sources:

- one file as ComfyUI users keep it (``t5xxl_fp16.safetensors``, ``t5xxl_fp8_e4m3fn[_scaled].safetensors``): keys
  ``shared.weight`` + ``encoder.block.*``, possibly under a bundle prefix (``text_encoders.t5xxl.transformer.``),
  possibly with the decoder half or ``encoder.embed_tokens.weight`` (a copy of ``shared.weight``); the config is
  inferred from shapes;
- a Hugging Face folder (``config.json`` + ``model.safetensors`` or shards listed in ``model.safetensors.index.json``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import T5Config

from ..errors import T5Error, listing, short
from ..io import SAFETENSORS_SUFFIXES, TensorHeader, json_field, read_json, read_safetensors_headers, read_shard_index

ANCHOR = "block.0.layer.0.SelfAttention.q.weight"  # first query projection: every T5 stack has exactly one
REL_BIAS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # (buckets, h), block 0 only
SCALE_SUFFIX = ".scale_weight"  # ComfyUI scaled fp8: per-tensor scale, weight = fp8 * scale
# Stored under the T5 root but not used by an encoder: decoder half, LM head, ComfyUI's scaled-fp8 marker.
_IGNORED_PREFIXES = ("decoder.", "lm_head.", "scaled_fp8")
_IGNORED_SUFFIXES = (".scale_input",)  # ComfyUI scaled fp8: input scales for fp8 matmuls; we compute in bf16/fp32
# Bounds on the sizes a file or config.json may declare, checked before a model is built (T5 v1.1 XXL: 24 layers,
# d_model 4096, 64 heads of 64, d_ff 10240, 32128 embedding rows, 32 buckets).
MAX_LAYERS = 128
MAX_WIDTH = 65536  # d_model, d_ff, heads x d_kv
MAX_HEADS = 1024
MAX_VOCAB = 2**20
MAX_BUCKETS = 4096
CONFIG_LIMITS = {
    "d_model": MAX_WIDTH,
    "d_kv": MAX_WIDTH,
    "d_ff": MAX_WIDTH,
    "num_layers": MAX_LAYERS,
    "num_heads": MAX_HEADS,
    "vocab_size": MAX_VOCAB,
    "relative_attention_num_buckets": MAX_BUCKETS,
    "relative_attention_max_distance": 2**20,
}
FEED_FORWARD = ("relu", "gelu", "gated-gelu", "gated-silu", "silu", "gelu_new", "gated-gelu_new")

TensorInfo = TensorHeader  # one tensor's safetensors header entry: file, dtype name, shape


@dataclass(frozen=True)
class T5Layout:
    """A T5 encoder located in safetensors files, before any tensor data is read."""

    source: Path  # the file or folder the caller named
    config: T5Config  # read from config.json (folder) or inferred from shapes (file)
    tensors: dict[str, TensorInfo]  # every stored key of the files
    prefix: str  # stored prefix of the encoder stack, e.g. "encoder." or "text_encoders.t5xxl.transformer.encoder."
    root: str  # prefix of the whole T5 (where "shared.weight" and "decoder." live), e.g. "" or "...transformer."


@dataclass(frozen=True)
class KeyPlan:
    """Which stored tensor fills each ``T5EncoderModel`` state-dict entry."""

    keys: dict[str, str]  # model key -> stored key (the tied embedding appears twice with one stored key)
    scales: dict[str, str]  # model key -> stored key of its scaled-fp8 scale, for the weights that have one


def read_headers(files: Sequence[Path]) -> dict[str, TensorInfo]:
    """Header entries of safetensors files: stored key -> dtype and shape; no tensor data is read."""
    return read_safetensors_headers(list(files), T5Error)


def folder_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a Hugging Face model folder: the shards of the index, or ``model.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = read_shard_index(index, T5Error)
        others = [s.name for s in shards if s.suffix not in SAFETENSORS_SUFFIXES]
        if others:
            raise T5Error(f"{index}: lists shards {listing(others, 3)}; expected .safetensors files")
        return shards
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    found = sorted(p.name for p in folder.iterdir())
    raise T5Error(
        f"{folder}: expected 'model.safetensors' or 'model.safetensors.index.json' with its shards beside "
        f"config.json; found {listing(found, 8)}. Pickled .bin weights are not read: use a safetensors copy."
    )


def read_folder_config(folder: Path) -> T5Config:
    """``config.json`` of a text-encoder folder, which must describe a T5 (``model_type`` "t5")."""
    path = folder / "config.json"
    data = read_json(path, T5Error)
    if data.get("model_type") != "t5":
        raise T5Error(
            f"{path}: model_type is {short(repr(data.get('model_type')), 60)}, expected 't5' "
            "(PixArt uses T5 v1.1 XXL: the text_encoder/ folder of a PixArt diffusers repo)"
        )
    for key, limit in CONFIG_LIMITS.items():
        json_field(data, key, int, str(path), T5Error, 0, (1, limit))
    proj = json_field(data, "feed_forward_proj", str, str(path), T5Error, "relu")
    if proj not in FEED_FORWARD:
        raise T5Error(f"{path}: feed_forward_proj is {short(repr(proj), 60)}, expected one of {FEED_FORWARD}")
    try:
        return T5Config.from_dict(data)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise T5Error(f"{path}: not a usable T5 config ({type(e).__name__}: {short(e, 160)})") from e


def locate_encoder(source: Path, tensors: Mapping[str, TensorInfo]) -> tuple[str, str]:
    """Stored prefixes ``(prefix, root)`` of the encoder stack and of the whole T5.

    ``prefix`` is what precedes ``block.0.layer.0.SelfAttention.q.weight`` (``decoder.`` prefixes are skipped);
    ``root`` is ``prefix`` without its trailing ``encoder.``.
    """
    prefixes = sorted(
        {
            key[: -len(ANCHOR)]
            for key in tensors
            if key.endswith(ANCHOR) and (key == ANCHOR or key[: -len(ANCHOR)].endswith("."))
        }
    )
    prefixes = [p for p in prefixes if not p.endswith("decoder.")]
    if not prefixes:
        raise T5Error(
            f"{source}: not a T5 text encoder: expected a key like 'encoder.{ANCHOR}', found none among "
            f"{len(tensors)} tensors (first keys: {listing(sorted(tensors), 3)}). Pick a T5 v1.1 XXL file such as "
            "t5xxl_fp16.safetensors."
        )
    if len(prefixes) > 1:
        raise T5Error(
            f"{source}: holds {len(prefixes)} T5 encoders (key prefixes {listing(prefixes, 3)}); expected one"
        )
    prefix = prefixes[0]
    root = prefix[: -len("encoder.")] if prefix.endswith("encoder.") else prefix
    return prefix, root


def embedding_key(prefix: str, root: str, tensors: Mapping[str, TensorInfo]) -> str | None:
    """Stored key of the token embedding: ``shared.weight``, else the stack's own ``embed_tokens.weight``."""
    for key in (root + "shared.weight", prefix + "embed_tokens.weight"):
        if key in tensors:
            return key
    return None


def infer_config(source: Path, tensors: Mapping[str, TensorInfo], prefix: str, root: str) -> T5Config:
    """T5 hyperparameters read from tensor shapes (never guessed).

    ``d_model`` from the query's input width, heads and buckets from the relative-attention bias (buckets, h),
    ``d_kv`` = query rows / heads, ``d_ff`` from ``wi``/``wi_0``, layers from the highest block index, vocab from the
    embedding rows; gated GELU (T5 v1.1) when ``wi_0``/``wi_1`` exist, ReLU (original T5) when only ``wi`` does.
    """

    def shape_of(key: str, what: str, limits: tuple[int, int]) -> tuple[int, int]:
        if key not in tensors:
            raise T5Error(f"{source}: missing '{short(key)}' ({what}); the T5 encoder in this file is incomplete")
        shape = tuple(tensors[key].shape)
        if len(shape) != 2 or not (1 <= shape[0] <= limits[0] and 1 <= shape[1] <= limits[1]):
            raise T5Error(
                f"{source}: '{short(key)}' ({what}) is {short(shape, 60)}, expected 2 dimensions of at most {limits}"
            )
        return shape

    inner, d_model = shape_of(prefix + ANCHOR, "query projection", (MAX_WIDTH, MAX_WIDTH))  # (h * d_kv, C)
    buckets, heads = shape_of(prefix + REL_BIAS, "relative attention bias", (MAX_BUCKETS, MAX_HEADS))  # (buckets, h)
    if inner % heads:
        raise T5Error(f"{source}: query rows {inner} are not a multiple of the {heads} heads of the attention bias")
    gated = prefix + "block.0.layer.1.DenseReluDense.wi_0.weight" in tensors
    wi_name = "wi_0" if gated else "wi"
    wi_key = f"{prefix}block.0.layer.1.DenseReluDense.{wi_name}.weight"
    d_ff = shape_of(wi_key, "feed-forward input", (MAX_WIDTH, MAX_WIDTH))[0]
    emb = embedding_key(prefix, root, tensors)
    if emb is None:
        raise T5Error(
            f"{source}: missing the token embedding ('{short(root)}shared.weight' or "
            f"'{short(prefix)}embed_tokens.weight')"
        )
    return T5Config(
        vocab_size=shape_of(emb, "token embedding", (MAX_VOCAB, MAX_WIDTH))[0],
        d_model=d_model,
        d_kv=inner // heads,
        d_ff=d_ff,
        num_layers=count_layers(source, tensors, prefix),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu" if gated else "relu",
        is_encoder_decoder=False,
        use_cache=False,
    )


def count_layers(source: Path, tensors: Mapping[str, TensorInfo], prefix: str) -> int:
    """The encoder's layer count from the blocks present: 0..n-1, each with its query projection, n <= MAX_LAYERS."""
    block = re.compile(re.escape(prefix) + r"block\.(\d{1,9})\.")
    last = max(int(m.group(1)) for key in tensors if (m := block.match(key)))
    if last >= MAX_LAYERS:
        raise T5Error(f"{source}: names encoder block {last}, expected at most {MAX_LAYERS} layers")
    incomplete = [i for i in range(last + 1) if f"{prefix}block.{i}.layer.0.SelfAttention.q.weight" not in tensors]
    if incomplete:
        raise T5Error(
            f"{source}: has tensors of encoder blocks 0..{last}, but blocks {listing(incomplete)} have no query "
            "projection"
        )
    return last + 1


def describe_file(path: Path) -> T5Layout:
    """Layout and inferred config of a single ``.safetensors`` T5 file."""
    tensors = read_headers([path])
    prefix, root = locate_encoder(path, tensors)
    return T5Layout(path, infer_config(path, tensors, prefix, root), tensors, prefix, root)


def describe_folder(folder: Path) -> T5Layout:
    """Layout of a Hugging Face text-encoder folder; the config comes from its ``config.json``."""
    config = read_folder_config(folder)
    tensors = read_headers(folder_weight_files(folder))
    prefix, root = locate_encoder(folder, tensors)
    layers = count_layers(folder, tensors, prefix)
    if config.num_layers != layers:
        raise T5Error(
            f"{folder / 'config.json'}: num_layers is {config.num_layers}, but the weights hold {layers} encoder blocks"
        )
    return T5Layout(folder, config, tensors, prefix, root)


def _stored_key(layout: T5Layout, model_key: str, emb: str | None) -> str | None:
    """Stored key for a ``T5EncoderModel`` key (``encoder.X`` -> prefix + ``X``), or None if it is not stored."""
    if model_key in ("shared.weight", "encoder.embed_tokens.weight"):
        return emb
    stored = layout.prefix + model_key.removeprefix("encoder.")
    return stored if stored in layout.tensors else None


def plan_keys(layout: T5Layout, expected: Mapping[str, tuple[int, ...]]) -> KeyPlan:
    """Match every expected model key to a stored tensor, checking shapes and that nothing under the root is left.

    Args:
        expected: ``T5EncoderModel`` state-dict key -> shape, for ``layout.config``.
    """
    emb = embedding_key(layout.prefix, layout.root, layout.tensors)
    keys: dict[str, str] = {}
    missing: list[str] = []
    for model_key, shape in expected.items():
        stored = _stored_key(layout, model_key, emb)
        if stored is None:
            missing.append(model_key)
            continue
        found = layout.tensors[stored].shape
        if tuple(found) != tuple(shape):
            cfg = layout.config
            raise T5Error(
                f"{layout.tensors[stored].file}: '{short(stored)}' is {short(found, 60)}, expected {tuple(shape)} "
                "for T5 "
                f"d_model={cfg.d_model}, heads={cfg.num_heads}, d_kv={cfg.d_kv}, d_ff={cfg.d_ff}, "
                f"vocab={cfg.vocab_size}"
            )
        keys[model_key] = stored
    if missing:
        raise T5Error(f"{layout.source}: missing {len(missing)} T5 encoder tensors, e.g. {listing(missing)}")
    scales = {k: _scale(s) for k, s in keys.items() if _scale(s) in layout.tensors}
    used = set(keys.values()) | set(scales.values()) | {layout.prefix + "embed_tokens.weight"}
    leftover = [
        key
        for key in layout.tensors
        if key.startswith(layout.root)
        and key not in used
        and not key[len(layout.root) :].startswith(_IGNORED_PREFIXES)
        and not key.endswith(_IGNORED_SUFFIXES)
    ]
    if leftover:
        raise T5Error(
            f"{layout.source}: {len(leftover)} tensors do not belong to a T5 encoder with d_model="
            f"{layout.config.d_model}, {layout.config.num_layers} layers, feed_forward_proj="
            f"{layout.config.feed_forward_proj!r}: {listing(sorted(leftover))}"
        )
    return KeyPlan(keys, scales)


def _scale(stored_weight_key: str) -> str:
    """Stored key of the scaled-fp8 scale that belongs to a ``....weight`` key."""
    return stored_weight_key.removesuffix(".weight") + SCALE_SUFFIX
