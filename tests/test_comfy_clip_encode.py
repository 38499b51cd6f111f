"""PixArt Sigma CLIP Text Encode (marker ``comfy``): a stock ComfyUI CLIP holding T5-XXL, loaded as CLIPLoader loads it
(types sd3 and pixart; fp16, fp8_e4m3fn and scaled fp8 files in ComfyUI's key layout), gives the CONDITIONING of
PixArt Sigma T5 Loader + PixArt Sigma Text Encode on the same file (<= 1e-5 relative, identical masks), and the plain
CLIPTextEncode does not. The checks run in a fresh process of ComfyUI's interpreter with the tree of
``$COMFYUI_PATH`` importable (tests/comfy_clip_inprocess.py, whose docstring says what it patches and why).

Run: ``COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python python -m pytest -m comfy
tests/test_comfy_clip_encode.py`` (a 0.3.64 tree may need its side packages on ``PYTHONPATH``, which is passed on).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from comfy_host import find_comfy, run_inprocess

pytestmark = pytest.mark.comfy
COMFY, WHY = find_comfy()
SCRIPT = Path(__file__).resolve().parent / "comfy_clip_inprocess.py"
FORMATS = ("fp16", "fp8_e4m3fn", "fp8_scaled")


def test_clip_encode_equals_t5_loader(tmp_path):
    if COMFY is None:
        pytest.skip(WHY)
    run_inprocess(SCRIPT, COMFY, tmp_path, FORMATS)
