"""Crafted files that must end in the pack's own short error naming the file: live pickles, lying safetensors
headers, bad JSON and wrong JSON types, shard lists that leave their folder. (Sizes, ReDoS and long prompts, which
could exhaust memory or time, run isolated in test_hostile_sizes.py.)"""

from __future__ import annotations

import json
import os

import pytest
import torch
from hostile import HINTS, check_refusal, raw_safetensors, refusal, tiny_dit_state
from safetensors.torch import save_file

from pixart import CheckpointError, LoraError, T5Error, load_dit
from pixart.checkpoints.keymap import official_to_diffusers
from pixart.lora import load_lora

LORA = {"transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 96)}


class Payload:
    """Unpickling this runs ``open(marker, "w")``: the file appearing means the pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _loaders():
    return {
        "dit": (lambda p: load_dit(p, variant=HINTS), CheckpointError),
        "lora": (load_lora, LoraError),
    }


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    """(spm-only folder, tokenizer.json folder) of a tokenizer trained on the spot."""
    import t5_fixtures as fx

    return fx.write_tokenizer_dirs(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def t5_model(tok_dirs):
    import t5_fixtures as fx
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(str(tok_dirs[1]), local_files_only=True)
    return fx.tiny_t5(fx.tiny_config(len(tokenizer)))


# ---- pickles -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize(("name", "loader"), [("model.pth", "dit"), ("lora.pt", "lora"), ("lora.bin", "lora")])
def test_pickle_with_a_live_payload_never_runs(tmp_path, name, loader, zipped):
    marker = tmp_path / "marker"
    path = tmp_path / name
    torch.save({"state_dict": {"w": torch.zeros(1), "x": Payload(marker)}}, path, _use_new_zipfile_serialization=zipped)
    call, kind = _loaders()[loader]
    message = refusal(lambda: call(path), path, kind)
    assert not marker.exists()
    assert "open)" in message and "can run code" in message


def test_lora_pt_with_a_pickled_object_or_plain_values(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"a.lora_A.weight": torch.zeros(1), "cfg": Payload(tmp_path / "m")}, path)
    assert "pickled object" in refusal(lambda: load_lora(path), path, LoraError)
    plain = tmp_path / "plain.pt"
    torch.save({**LORA, "note": "trained on cats", "step": 5}, plain)
    assert "expected a flat dict of tensors, found 2 other entries" in refusal(lambda: load_lora(plain), plain)


def test_t5_never_unpickles(tmp_path, tok_dirs):
    from pixart.text_encoder import load_t5

    marker = tmp_path / "marker"
    path = tmp_path / "t5.bin"
    torch.save({"x": Payload(marker)}, path)
    refusal(lambda: load_t5(path, tokenizer=tok_dirs[1]), path, T5Error)
    assert not marker.exists()


# ---- safetensors headers -----------------------------------------------------------------------------------------

TENSOR = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
HEADERS = {
    "huge-length": ({"w": TENSOR}, 16, 2**62),
    "not-json": (b"{not json", 0, None),
    "offsets-past-the-end": ({"w": {**TENSOR, "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}, 16, None),
    "shape-disagrees-with-bytes": ({"w": {**TENSOR, "shape": [3, 3]}}, 16, None),
    "unknown-dtype": ({"w": {**TENSOR, "dtype": "X99"}}, 16, None),
    "metadata-not-strings": ({"__metadata__": {"lora_adapter_metadata": 5}, "w": TENSOR}, 16, None),
    "header-a-list": (b"[1, 2, 3]", 0, None),
}


@pytest.mark.parametrize("case", list(HEADERS))
@pytest.mark.parametrize("loader", ["dit", "lora", "t5"])
def test_corrupt_and_lying_safetensors_headers(tmp_path, case, loader, tok_dirs):
    header, size, length = HEADERS[case]
    path = raw_safetensors(tmp_path / f"{case}.safetensors", header, b"\x00" * size, length)
    if loader == "t5":
        from pixart.text_encoder import load_t5

        refusal(lambda: load_t5(path, tokenizer=tok_dirs[1]), path, T5Error)
    else:
        call, kind = _loaders()[loader]
        refusal(lambda: call(path), path, kind)


def test_dit_loads_from_sft(tmp_path):
    path = tmp_path / "tiny.sft"
    save_file(tiny_dit_state(), str(path))
    assert load_dit(path, variant=HINTS).config.depth == 2


# ---- JSON --------------------------------------------------------------------------------------------------------

DIT_CONFIGS = {
    "not-json": "{",
    "a-list": "[]",
    "nan": '{"_class_name": "PixArtTransformer2DModel", "sample_size": NaN}',
    "heads-a-string": {"num_attention_heads": "16"},
    "heads-a-bool": {"num_attention_heads": True},
    "huge-sample-size": {"sample_size": 10**12},
    "scale-a-list": {"sample_size": 128, "interpolation_scale": [2]},
    "class-a-dict": {"_class_name": {"a": 1}},
}


@pytest.mark.parametrize("case", list(DIT_CONFIGS))
def test_dit_folder_config_json(tmp_path, case):
    content = DIT_CONFIGS[case]
    if isinstance(content, dict):
        content = json.dumps({"_class_name": "PixArtTransformer2DModel", **content})
    (tmp_path / "config.json").write_text(content)
    save_file(official_to_diffusers(tiny_dit_state()), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    refusal(lambda: load_dit(tmp_path), tmp_path / "config.json", CheckpointError)


T5_CONFIGS = {
    "layers-a-string": {"num_layers": "24"},
    "layers-huge": {"num_layers": 10**9},
    "width-a-list": {"d_model": [64]},
    "feed-forward-a-number": {"feed_forward_proj": 5},
    "feed-forward-unknown": {"feed_forward_proj": "gated-(a+)+"},
    "layers-disagree-with-weights": {"num_layers": 7},
}


@pytest.mark.parametrize("case", list(T5_CONFIGS))
def test_t5_folder_config_json(tmp_path, case, t5_model, tok_dirs):
    import t5_fixtures as fx

    from pixart.text_encoder import load_t5

    folder = fx.write_folder(t5_model, tmp_path / "t5")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **T5_CONFIGS[case]}))
    refusal(lambda: load_t5(folder, tokenizer=tok_dirs[1]), folder / "config.json", T5Error)


PEFT_CONFIGS = {
    "rank-a-string": {"r": "4"},
    "rank-zero": {"r": 0},
    "alpha-nan": '{"peft_type": "LORA", "r": 2, "lora_alpha": NaN}',
    "pattern-a-list": {"rank_pattern": ["to_q"]},
    "pattern-value-a-string": {"alpha_pattern": {"to_q": "x"}},
    "pattern-a-regex": {"rank_pattern": {"transformer_blocks\\.[0-9]+\\.attn1": 2}},
    "dora-a-string": {"use_dora": "no"},
    "type-a-number": {"peft_type": 5},
    "top-level-a-string": '"LORA"',
}


@pytest.mark.parametrize("case", list(PEFT_CONFIGS))
def test_peft_adapter_config_json(tmp_path, case):
    content = PEFT_CONFIGS[case]
    if isinstance(content, dict):
        content = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2, **content})
    (tmp_path / "adapter_config.json").write_text(content)
    save_file({f"base_model.model.{k}": v for k, v in LORA.items()}, str(tmp_path / "adapter_model.safetensors"))
    refusal(lambda: load_lora(tmp_path), tmp_path / "adapter_config.json", LoraError)


@pytest.mark.parametrize("metadata", ["{", "[1]", '{"transformer.r": "two"}', '{"transformer.r": 1e400}'])
def test_lora_header_metadata(tmp_path, metadata):
    path = tmp_path / "meta.safetensors"
    save_file(LORA, str(path), metadata={"lora_adapter_metadata": metadata})
    refusal(lambda: load_lora(path), path, LoraError)


# ---- shard indexes -----------------------------------------------------------------------------------------------


def _dit_folder(root, shard_names=("a.safetensors", "b.safetensors")):
    """A diffusers folder whose weights are split over two shards listed in an index."""
    root.mkdir(parents=True, exist_ok=True)
    tensors = official_to_diffusers(tiny_dit_state())
    keys = sorted(tensors)
    halves = {shard_names[0]: keys[: len(keys) // 2], shard_names[1]: keys[len(keys) // 2 :]}
    for name, part in halves.items():
        save_file({k: tensors[k] for k in part}, str(root / name))
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (root / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    config = {"_class_name": "PixArtTransformer2DModel", "num_attention_heads": 3, "sample_size": 16}
    (root / "config.json").write_text(json.dumps(config))
    return root


def _point_shard(folder, name):
    index_path = folder / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = name
    index_path.write_text(json.dumps(index))
    return index_path


@pytest.mark.parametrize("case", ["parent", "absolute", "symlink", "not-a-string", "map-a-list"])
def test_shard_names_stay_in_their_folder(tmp_path, case):
    folder = _dit_folder(tmp_path / "model")
    outside = tmp_path / "secret.safetensors"
    save_file({"w": torch.zeros(1)}, str(outside))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if case == "parent":
        _point_shard(folder, "../secret.safetensors")
    elif case == "absolute":
        _point_shard(folder, str(outside))
    elif case == "symlink":
        os.symlink(outside, folder / "link.safetensors")
        _point_shard(folder, "link.safetensors")
    elif case == "not-a-string":
        _point_shard(folder, 5)
    else:
        index.write_text(json.dumps({"weight_map": ["a.safetensors"]}))
    message = refusal(lambda: load_dit(folder), index, CheckpointError)
    assert "secret" not in message or case != "symlink"


def test_t5_shard_names_stay_in_their_folder(tmp_path, t5_model, tok_dirs):
    import t5_fixtures as fx

    from pixart.text_encoder import load_t5

    folder = fx.write_folder(t5_model, tmp_path / "t5", max_shard_size="20KB")
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"][next(iter(data["weight_map"]))] = "../../t5/model-00001.safetensors"
    index.write_text(json.dumps(data))
    refusal(lambda: load_t5(folder, tokenizer=tok_dirs[1]), index, T5Error)


def test_hugging_face_cache_links_still_load(tmp_path):
    """The HF cache keeps a snapshot's files as links into ``blobs/``: shards beside the index's own target load."""
    blobs = _dit_folder(tmp_path / "blobs")
    snapshot = tmp_path / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for file in blobs.iterdir():
        os.symlink(file, snapshot / file.name)
    assert load_dit(snapshot).config.depth == 2


def test_messages_shorten_untrusted_names(tmp_path):
    path = tmp_path / "long.safetensors"
    save_file({"x" * 1000 + "\u03a3": torch.zeros(1), **LORA}, str(path))
    message = check_refusal(pytest.raises(LoraError, load_lora, path).value, path)
    assert "..." in message and "x" * 100 not in message
