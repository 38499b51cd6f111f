"""The pack as an ordinary package inside ComfyUI (marker ``comfy``): two copies of it side by side (what a zip
download beside a clone makes) each run their own model code, and loading them imports nothing of theirs under a
global name.

ComfyUI's own loader (``nodes.load_custom_node``) imports a link to this repository and a copy of it under two new
folder names in the session's process; the loader's registries (node classes, display names, module and web folders)
are swapped for empty ones while it does, so later tests see the session's own nodes. The copy's ``pixart`` carries a
marker, so a copy using the other's model code would show. ``pixart``, ``scripts`` and ``tests`` are already imported
here under their global names by the tests themselves, so the check is stronger than "no global ``pixart``": every
module the loads add whose file lies inside either folder belongs to that folder's package.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfy
REPO = Path(__file__).resolve().parents[2]
NODES = {"PixArtSigmaT5Loader", "PixArtSigmaTextEncode", "PixArtSigmaDiTLoader", "PixArtSigmaSampler",
         "PixArtSigmaResolution", "PixArtSigmaLoraLoader"}  # fmt: skip
REGISTRIES = ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "EXTENSION_WEB_DIRS", "LOADED_MODULE_DIRS")


def places(module) -> list[Path]:
    """Where a module lies: its file and, for a package, its folders (a namespace package has only those)."""
    found = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])]
    return [Path(p).resolve() for p in found if isinstance(p, str)]


def load(folder: Path, monkeypatch) -> dict:
    """``folder`` loaded by ComfyUI's loader into empty registries: {registry name: what the load wrote there}."""
    import nodes  # ComfyUI's nodes.py

    for name in REGISTRIES:
        monkeypatch.setattr(nodes, name, {})
    assert asyncio.run(nodes.load_custom_node(str(folder))), f"ComfyUI's loader did not load {folder}"
    return {name: dict(getattr(nodes, name)) for name in REGISTRIES}


@pytest.fixture
def restore_modules():
    """The modules a test adds to ``sys.modules`` are taken out again afterwards."""
    before = set(sys.modules)
    yield before
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_two_copies_each_use_their_own_model_code(comfyui, tmp_path, monkeypatch, restore_modules):
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    ours = custom / "comfyui-pixart-sigma"
    ours.symlink_to(REPO, target_is_directory=True)
    copy = custom / "comfyui-pixart-sigma-main"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.jpg"))
    with open(copy / "pixart" / "__init__.py", "a", encoding="utf-8") as f:
        f.write('\nCOPY_MARKER = "main"\n')
    packages = {folder: str(folder).replace(".", "_x_") for folder in (ours, copy)}  # ComfyUI's module names
    assert not any(name in sys.modules for name in packages.values())

    for folder, marker in ((ours, None), (copy, "main")):
        package = packages[folder]
        written = load(folder, monkeypatch)
        pixart = sys.modules[f"{package}.pixart"]
        assert Path(pixart.__file__).resolve() == (folder / "pixart" / "__init__.py").resolve(), pixart.__file__
        assert getattr(pixart, "COPY_MARKER", None) == marker, folder
        config = sys.modules[f"{package}.nodes.sampler"].PixArtConfig
        assert config.__module__ == f"{package}.pixart.config", config.__module__
        assert Path(sys.modules[config.__module__].__file__).resolve() == (folder / "pixart" / "config.py").resolve()
        node_modules = {name: cls.__module__ for name, cls in written["NODE_CLASS_MAPPINGS"].items()}
        assert set(node_modules) >= NODES, sorted(node_modules)
        assert all(module.startswith(f"{package}.nodes.") for module in node_modules.values()), node_modules
        assert written["LOADED_MODULE_DIRS"] == {folder.name: str(folder)}, written["LOADED_MODULE_DIRS"]

    folders = {folder: folder.resolve() for folder in (ours, copy)}
    for name in set(sys.modules) - restore_modules:
        where = places(sys.modules[name])
        inside = [folder for folder, real in folders.items() if any(p.is_relative_to(real) for p in where)]
        owners = [folder for folder in inside if name == packages[folder] or name.startswith(packages[folder] + ".")]
        assert owners == inside, f"the loads imported {name!r} from {inside} outside the package of its folder"
