"""The node pack's files without ComfyUI: every source file of the nodes encodes in cp1252 and uses no ComfyUI
module's ``__file__`` nor ``sys.path``; the top-level ``__init__.py`` defines nothing outside ComfyUI. The nodes
themselves are checked inside a real ComfyUI (tests/comfy/test_node_schemas.py, tests/comfy/test_node_helpers.py)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFY_FILE = re.compile(r"\b(comfy|comfy_api|comfy_extras|folder_paths|nodes)(\.\w+)*\.__file__")


def test_text_is_windows_safe():
    """Every source file of the nodes and the pack's __init__.py encodes in cp1252 (comfy-test's SYNTAX level)."""
    for path in [REPO / "__init__.py", *sorted((REPO / "nodes").rglob("*.py"))]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                line.encode("cp1252")
            except UnicodeEncodeError:
                pytest.fail(f"{path.name}:{number} is not cp1252: {line.strip()[:80]}")
        assert not COMFY_FILE.search(path.read_text()), f"{path.name} uses __file__ of a ComfyUI module"
        assert "sys.path" not in path.read_text(), path.name


def test_top_level_init_does_only_the_guarded_import():
    """Without ComfyUI the pack's __init__.py defines nothing (ComfyUI-GGUF's pattern); it never edits sys.path."""
    spec = importlib.util.spec_from_file_location("pack_without_comfy", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    path_before = list(sys.path)
    spec.loader.exec_module(module)
    assert sys.path == path_before
    assert not hasattr(module, "comfy_entrypoint") and not hasattr(module, "NODE_CLASS_MAPPINGS")
