"""Find and load the T5 tokenizer from local files only (``tokenizer.json`` or ``spiece.model``); never downloads.

Search order: the caller's explicit path; then the folders of the model source (a text-encoder folder, its
``tokenizer/`` sibling, a pipeline root's ``tokenizer/``); then the caller's fallback folders (the ComfyUI node
passes ComfyUI's bundled ``comfy/text_encoders/t5_tokenizer``). A single weights file has no folders of its own:
a tokenizer lying beside ``models/text_encoders/*.safetensors`` could belong to any model.

``T5TokenizerFast`` is used throughout: in transformers 5 it is the same class as ``T5Tokenizer`` (tokenizers
backend, converts ``spiece.model`` on load); in 4.x it is the fast tokenizer that also reads ``tokenizer.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import sentencepiece
from transformers import PreTrainedTokenizerBase, T5TokenizerFast

from ..errors import T5Error, short
from ..io import json_field, read_json

TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
MAX_SPIECE_BYTES = 64 * 2**20  # T5's spiece.model is 792 kB


def has_tokenizer(folder: Path) -> bool:
    """True if ``folder`` holds ``tokenizer.json`` or ``spiece.model``."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def find_tokenizer(
    explicit: str | os.PathLike[str] | None,
    search_dirs: Sequence[Path],
    fallback_dirs: Sequence[str | os.PathLike[str]],
    model_path: Path,
) -> Path:
    """The tokenizer folder or file to load; a T5Error lists every place looked at when there is none.

    Args:
        explicit: the caller's tokenizer folder or file; when given, nothing else is searched.
        search_dirs: folders of the model source, in order.
        fallback_dirs: the caller's extra folders, searched last.
        model_path: the weights path, named in the error.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        for folder in (path, path / "tokenizer"):
            if folder.is_dir() and has_tokenizer(folder):
                return folder
        raise T5Error(
            f"{path}: expected a T5 tokenizer: a folder holding tokenizer.json or spiece.model (or its tokenizer/ "
            f"subfolder), or one of those files; {'no such path' if not path.exists() else 'found neither'}"
        )
    looked = [*search_dirs, *(Path(d).expanduser() for d in fallback_dirs)]
    for folder in looked:
        if has_tokenizer(folder):
            return folder
    places = "\n".join(f"  - {folder}" for folder in looked) or "  (nowhere: a single file has no tokenizer folder)"
    raise T5Error(
        f"{model_path}: no T5 tokenizer found. Looked for {' or '.join(TOKENIZER_FILES)} in:\n{places}\n"
        "Pass tokenizer=<folder or file>: the tokenizer/ folder of a PixArt diffusers repo, or ComfyUI's "
        "comfy/text_encoders/t5_tokenizer. Nothing is downloaded."
    )


def check_sentencepiece(path: Path) -> None:
    """Raise a T5Error unless ``path`` is a sentencepiece model (so transformers never guesses another format)."""
    try:
        size = path.stat().st_size
        if size > MAX_SPIECE_BYTES:
            raise T5Error(f"{path}: {size} bytes, more than the {MAX_SPIECE_BYTES} a sentencepiece model may have")
        sentencepiece.SentencePieceProcessor().LoadFromSerializedProto(path.read_bytes())
    except (OSError, RuntimeError) as e:
        raise T5Error(f"{path}: not a sentencepiece model (corrupt or another format: {type(e).__name__})") from e


def check_tokenizer_json(path: Path) -> None:
    """Raise a T5Error unless ``path`` is a JSON object with the ``model`` and ``added_tokens`` a tokenizer has."""
    data = read_json(path, T5Error)
    json_field(json_field(data, "model", dict, str(path), T5Error), "type", str, f"{path} (model)", T5Error)
    json_field(data, "added_tokens", list, str(path), T5Error)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Load a T5 tokenizer from a folder, a ``tokenizer.json``/``spiece.model`` file, or a ``*.model`` file.

    The file transformers will read is checked first (``tokenizer.json`` is preferred, as transformers does), so a
    corrupt one ends in a T5Error naming it rather than in transformers' guesses about other formats.
    """
    if path.is_file() and path.name not in TOKENIZER_FILES and path.suffix != ".model":
        raise T5Error(
            f"{path}: expected a tokenizer folder, 'tokenizer.json', 'spiece.model' or a sentencepiece '*.model' file"
        )
    source = path.parent if path.is_file() and path.name in TOKENIZER_FILES else path
    if source.is_dir() and (source / "tokenizer.json").is_file():
        check_tokenizer_json(source / "tokenizer.json")
    elif source.is_dir() and (source / "spiece.model").is_file():
        check_sentencepiece(source / "spiece.model")
    elif source.is_file():
        check_sentencepiece(source)
    try:
        return T5TokenizerFast.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise T5Error(
            f"{path}: could not read the T5 tokenizer ({type(e).__name__}); expected the tokenizer.json or "
            f"spiece.model of T5 v1.1 ({short(e, 120) if 'install' not in str(e) else 'unrecognised format'})"
        ) from e


def check_tokenizer(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, tokenizer_path: Path, model_path: Path
) -> None:
    """Raise a T5Error unless ``tokenizer`` has pad and eos tokens and fits the ``vocab_size`` embedding rows."""
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise T5Error(
            f"{tokenizer_path}: the tokenizer has no <pad> or </s> token; expected a T5 sentencepiece tokenizer "
            f"(pad id 0, eos id 1, unk id 2), found pad={tokenizer.pad_token_id}, eos={tokenizer.eos_token_id}"
        )
    if len(tokenizer) > vocab_size:
        raise T5Error(
            f"{tokenizer_path}: the tokenizer has {len(tokenizer)} tokens but the T5 in {model_path} embeds only "
            f"{vocab_size}; they do not belong together (T5 v1.1: 32100 tokens, 32128 embedding rows)"
        )
