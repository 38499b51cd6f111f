"""PixArt Sigma Cache in a real ComfyUI (marker ``comfy``): the node on our MODEL with PixArt Sigma Sampler, KSampler
and SamplerCustomAdvanced (dpmpp_2m, sgm_uniform) equals ``pixart``'s T-GATE / first-block cache / DBCache driven
through ComfyUI's DPM-Solver++ 2M on the same tiny weights, prompt states, noise and sigmas (fp32 <= 1e-5 relative;
the same setting shifted by one step differs by more than 10x that), reusing the same steps (its log line);
disabled settings give the plain run bit for bit; heun (two model calls per step) and LoRA weight patches run with
it; T-GATE at CFG 1 refuses with a clear error. The checks run in one process of ComfyUI's interpreter with the
tree of ``$COMFYUI_PATH`` importable (tests/comfy_cache_inprocess.py).

Run: ``COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python python -m pytest -m comfy
tests/test_comfy_cache.py`` (a 0.3.64 tree may need its side packages on ``PYTHONPATH``, which is passed on).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from comfy_host import find_comfy, run_inprocess

pytestmark = pytest.mark.comfy
COMFY, WHY = find_comfy()
SCRIPT = Path(__file__).resolve().parent / "comfy_cache_inprocess.py"
CHECKS = ["tgate", "first_block_cache", "dbcache", "disabled_equals_plain", "heun_and_lora", "tgate_needs_both_halves"]


def test_cache_node_in_comfyui(tmp_path):
    if COMFY is None:
        pytest.skip(WHY)
    run_inprocess(SCRIPT, COMFY, tmp_path, CHECKS)
