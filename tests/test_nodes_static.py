"""The node pack's files without ComfyUI: every source file of the nodes encodes in cp1252 and uses no ComfyUI
module's ``__file__`` nor ``sys.path``; the top-level ``__init__.py`` defines nothing outside ComfyUI. The nodes
themselves are checked inside a real ComfyUI (tests/comfy/test_node_schemas.py, tests/comfy/test_node_helpers.py)."""

from __future__ import annotations

import ast
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


COMFY_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes")


def _imports(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node, "." * node.level + (node.module or "")))
    return found


def test_nodes_are_organised_by_family():
    """Each module of nodes/ imports ComfyUI at its top (none inside a function), no importability twins remain
    (cache + comfy_cache, schedule + comfy_sampling, dit_loader + comfy_model + comfy_blocks, t5_loader + t5_model,
    controlnet + comfy_controlnet, memory + comfy_memory),
    and the MODEL adapter imports nothing of the cache family."""
    folder = REPO / "nodes"
    twins = ["comfy_cache.py", "comfy_sampling.py", "dit_loader.py", "comfy_model.py", "comfy_blocks.py"]
    twins += ["t5_loader.py", "t5_model.py", "comfy_controlnet.py", "comfy_memory.py"]
    assert not [name for name in twins if (folder / name).exists()]
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
            for node, name in _imports(function):
                where = f"{path.relative_to(folder)}:{node.lineno}"
                assert name.split(".")[0] not in COMFY_MODULES, f"{where} imports {name} inside a function"
    model = ast.parse((folder / "dit" / "model.py").read_text(encoding="utf-8"))
    assert not [name for _, name in _imports(model) if "cache" in name], "the MODEL adapter imports the cache family"
