"""Files that declare huge sizes, ReDoS patterns and huge prompts: each case runs in a fresh interpreter limited to
4 GB of address space and a timeout, so a regression fails here instead of exhausting the machine."""

from __future__ import annotations

import json

import pytest
import torch
from hostile import HINTS, check_refusal, isolated, tiny_dit_state
from safetensors.torch import save_file

from pixart import CheckpointError, LoraError, T5Error

LORA = {
    "transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 96),
    "transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(96, 2),
}
REDOS = ["(a+)+$", "(x+x+)+y", "^(([a-z])+.)+[A-Z]([a-z])+$", "(.*a){30}"]


def _dit(tmp_path, name: str, **extra: torch.Tensor):
    path = tmp_path / name
    save_file({**tiny_dit_state(), **extra}, str(path))
    return path


@pytest.mark.parametrize(
    ("name", "extra", "says"),
    [
        ("deep.safetensors", {"blocks.99999999.attn.qkv.weight": torch.zeros(0)}, "names block 99999999"),
        ("gap.safetensors", {"blocks.200.mlp.fc1.weight": torch.zeros(0)}, "no attention weights for blocks [2, 3"),
        ("table.safetensors", {"pos_embed": torch.zeros(1, 10**10, 0)}, "'pos_embed' is (1, 10000000000, 0)"),
        ("caption.safetensors", {"y_embedder.y_embedding": torch.zeros(10**9, 0)}, "'y_embedder.y_embedding' is"),
        ("width.safetensors", {"x_embedder.proj.weight": torch.zeros(10**9, 0, 2, 2)}, "'x_embedder.proj.weight' is"),
    ],
)
def test_dit_declared_sizes_are_bounded_by_the_tensors(tmp_path, name, extra, says):
    path = _dit(tmp_path, name, **extra)
    result = isolated(f"pixart.load_dit(args[0], variant={HINTS!r})", path)
    assert says in check_refusal(result, path, CheckpointError)


def _t5_file(tmp_path, **extra):
    """A tiny T5 encoder as one safetensors file, plus a tokenizer folder."""
    import t5_fixtures as fx
    from transformers import T5TokenizerFast

    tok_dirs = fx.write_tokenizer_dirs(tmp_path / "tok")
    tokenizer = T5TokenizerFast.from_pretrained(str(tok_dirs[1]), local_files_only=True)
    model = fx.tiny_t5(fx.tiny_config(len(tokenizer)))
    state = {**fx.encoder_state(model), **extra}
    path = tmp_path / "t5.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, tok_dirs[1], model


def test_t5_block_index_and_config_layers_are_bounded(tmp_path):
    import t5_fixtures as fx

    deep = {"encoder.block.99999999.layer.0.SelfAttention.q.weight": torch.zeros(0)}
    path, tokenizer, model = _t5_file(tmp_path, **deep)
    result = isolated("pixart.load_t5(args[0], tokenizer=args[1])", path, tokenizer)
    assert "names encoder block 99999999" in check_refusal(result, path, T5Error)
    folder = fx.write_folder(model, tmp_path / "folder")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_layers": 10**9}))
    result = isolated("pixart.load_t5(args[0], tokenizer=args[1])", folder, tokenizer)
    assert "'num_layers' is 1000000000, expected 1..128" in check_refusal(result, folder / "config.json", T5Error)


@pytest.mark.parametrize("pattern", REDOS)
def test_redos_patterns_in_adapter_config_are_refused_at_once(tmp_path, pattern):
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "rank_pattern": {pattern: 2}, "alpha_pattern": {}}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    save_file({f"base_model.model.{k}": v for k, v in LORA.items()}, str(tmp_path / "adapter_model.safetensors"))
    result = isolated("pixart.lora.load_lora(args[0])", tmp_path, timeout=60)
    assert "is not a module name" in check_refusal(result, tmp_path / "adapter_config.json", LoraError)


@pytest.mark.parametrize("pattern", REDOS)
def test_redos_patterns_in_safetensors_metadata_are_refused_at_once(tmp_path, pattern):
    path = tmp_path / "meta.safetensors"
    packed = {"transformer.r": 2, "transformer.lora_alpha": 4, "transformer.alpha_pattern": {pattern: 8.0}}
    save_file(
        {f"transformer.{k}": v for k, v in LORA.items()}, str(path), {"lora_adapter_metadata": json.dumps(packed)}
    )
    result = isolated("pixart.lora.load_lora(args[0])", path, timeout=60)
    assert "is not a module name" in check_refusal(result, path, LoraError)


def test_module_name_patterns_still_apply(tmp_path):
    path = tmp_path / "names.safetensors"
    packed = {"transformer.r": 2, "transformer.lora_alpha": 4, "transformer.alpha_pattern": {"attn1.to_q": 8.0}}
    save_file(
        {f"transformer.{k}": v for k, v in LORA.items()}, str(path), {"lora_adapter_metadata": json.dumps(packed)}
    )
    result = isolated("[t.scale for t in pixart.lora.load_lora(args[0]).targets]", path, timeout=60)
    assert result["error"] is None and result["result"] == "[4.0]"


def test_huge_prompt_is_cut_before_tokenising(tmp_path):
    path, tokenizer, _ = _t5_file(tmp_path)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("a small cat on the mountain " * 750_000)  # 21 MB
    statement = (
        "pixart.load_t5(args[0], tokenizer=args[1], dtype=__import__('torch').float32)"
        ".encode(args[2].read_text(), max_length=300)[1].sum().item()"
    )
    result = isolated(statement, path, tokenizer, prompt, timeout=300)
    assert result["error"] is None and result["result"] == "300"
    (warning,) = [line for line in result["logs"] if "over max_length=300" in line]
    assert f"characters after the first {300 * 64}" in warning
