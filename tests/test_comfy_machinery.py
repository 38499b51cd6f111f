"""Our MODEL takes part in ComfyUI's machinery (marker ``comfy``): DIFFUSION_MODEL wrappers, ``patches_replace``
block patches, EasyCache, SkipLayerGuidanceDiT, deep clones (MultiGPU), Cancel between blocks, ComfyUI's attention
backends. Each check runs in a fresh process of ComfyUI's interpreter with the tree of ``$COMFYUI_PATH`` importable
(tests/comfy_inprocess.py); its numbers are compared there with ``pixart`` run directly.

Run: ``COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python python -m pytest -m comfy
tests/test_comfy_machinery.py`` (a 0.3.64 tree may need its side packages on ``PYTHONPATH``, which is passed on).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from comfy_host import find_comfy, run_inprocess

pytestmark = pytest.mark.comfy
COMFY, WHY = find_comfy()
SCRIPT = Path(__file__).resolve().parent / "comfy_inprocess.py"
CHECKS = [
    "wrapper",
    "block_patch_contract",
    "skip_layer_guidance",
    "easycache",
    "deep_clone",
    "cancel_between_blocks",
    "attention_backends",
    "t5_in_memory_manager",
]


@pytest.mark.parametrize("check", CHECKS)
def test_comfy_machinery(check, tmp_path):
    if COMFY is None:
        pytest.skip(WHY)
    run_inprocess(SCRIPT, COMFY, tmp_path, [check])
