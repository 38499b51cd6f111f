"""PixArt ControlNets in a real ComfyUI (marker ``comfy``): PixArt Sigma ControlNet Loader -> stock Apply ControlNet
(hint through a VAE) -> sampling, on tiny random weights, equals ``pixart`` with ``control_hook`` (fp32 <= 1e-5
relative): strength 0 is the run without ControlNet, strength s scales the residuals, start / end percent switch it
per step, two chained ControlNets (official and diffusers-adapter files) add, and with CFG each row gets the control
Apply ControlNet attached to it; a missing VAE and a MODEL that is not ours are refused. The checks run in one process
of ComfyUI's interpreter with the tree of ``$COMFYUI_PATH`` importable (tests/comfy_controlnet_inprocess.py).

Run: ``COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python python -m pytest -m comfy
tests/test_comfy_controlnet.py`` (a 0.3.64 tree may need its side packages on ``PYTHONPATH``, which is passed on).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from comfy_host import find_comfy, run_inprocess

pytestmark = pytest.mark.comfy
COMFY, WHY = find_comfy()
SCRIPT = Path(__file__).resolve().parent / "comfy_controlnet_inprocess.py"
CHECKS = ["strength", "percent_range", "chained_add", "cfg_rows", "refusals"]


def test_controlnet_through_apply_controlnet(tmp_path):
    if COMFY is None:
        pytest.skip(WHY)
    run_inprocess(SCRIPT, COMFY, tmp_path, CHECKS, timeout=1800)
