"""The pack as an ordinary package inside ComfyUI (marker ``comfy``): two copies of it side by side (what a zip
download beside a clone makes) each run their own model code, and the pack claims no global module names.

ComfyUI's own loader (``nodes.load_custom_node``) imports both folders in one fresh process of the session's
interpreter (tests/comfy/two_copies.py): the check needs a process that has imported neither ``pixart`` nor a copy of
the pack yet, which the session's own process is not. The second copy's ``pixart`` carries a marker, so a copy using
the other's model code would show.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from comfy_session import STARTED

pytestmark = pytest.mark.comfy
REPO = Path(__file__).resolve().parents[2]
NODES = {"PixArtSigmaT5Loader", "PixArtSigmaTextEncode", "PixArtSigmaDiTLoader", "PixArtSigmaSampler",
         "PixArtSigmaResolution", "PixArtSigmaLoraLoader"}  # fmt: skip


def load_in_comfy(comfyui, folders: list[Path], scratch: Path) -> dict:
    script = Path(__file__).resolve().parent / "two_copies.py"
    cmd = [sys.executable, "-I", "-B", str(script), str(comfyui.root), *map(str, folders)]
    STARTED["subprocesses"] += 1
    done = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_copies_each_use_their_own_model_code(comfyui, tmp_path):
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    ours = custom / "comfyui-pixart-sigma"
    ours.symlink_to(REPO, target_is_directory=True)
    copy = custom / "comfyui-pixart-sigma-main"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.jpg"))
    with open(copy / "pixart" / "__init__.py", "a", encoding="utf-8") as f:
        f.write('\nCOPY_MARKER = "main"\n')
    scratch = tmp_path / "cwd"
    scratch.mkdir()
    report = load_in_comfy(comfyui, [ours, copy], scratch)

    packs = report["packs"]
    for folder, marker in ((ours, None), (copy, "main")):
        pack = packs[str(folder)]
        assert pack["loaded"] is True, pack
        assert Path(pack["pixart_file"]).resolve() == (folder / "pixart" / "__init__.py").resolve(), pack
        assert pack["marker"] == marker, pack
        assert Path(pack["sampler_config_file"]).resolve() == (folder / "pixart" / "config.py").resolve(), pack
        assert pack["sampler_config_module"].endswith(
            "comfyui-pixart-sigma" + ("-main" if marker else "") + ".pixart.config"
        )
    for name, found in report["globals"].items():
        assert not found["in_sys_modules"], f"'{name}' was imported as a global module: {found}"
        where = json.dumps(found["found"])
        assert str(REPO) not in where and str(copy) not in where and str(ours) not in where, (name, found)
    assert set(report["node_modules"]) >= NODES, report["node_modules"]
    packages = tuple(str(folder).replace(".", "_x_") + ".nodes." for folder in (ours, copy))
    assert all(module.startswith(packages) for module in report["node_modules"].values()), report["node_modules"]
