"""The ComfyUI test host for the ``comfy``-marked tests, on top of the shared helpers in ``scripts/``.

The checkout is ``$COMFYUI_PATH``, else the ComfyUI this repository sits in (``ComfyUI/custom_nodes/<this repo>``).
Its interpreter is the first that imports the checkout's requirements (scripts/comfy_checkout.py: ``$COMFYUI_PYTHON``,
else a venv in or beside the checkout, else the test venv of scripts/comfy_env.py, else the one running the tests);
with none, the tests skip and the reason lists what was tried.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from scripts import comfy_checkout
from scripts import tiny_weights as tiny_weights  # re-exported for the tests
from scripts.comfy_server import ComfyServer
from scripts.comfy_server import error_message as error_message  # re-exported for the tests

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_workflows"


@functools.cache
def _interpreter(comfy: Path) -> comfy_checkout.Interpreter | str:
    try:
        return comfy_checkout.choose_interpreter(comfy)
    except comfy_checkout.NoInterpreter as e:
        return str(e)


def find_comfy() -> tuple[Path | None, str]:
    """(checkout, "") when a checkout and an interpreter that runs it were found, else (None, why not)."""
    comfy, why = comfy_checkout.find_comfy()
    if comfy is None:
        return None, why
    interpreter = _interpreter(comfy)
    return (comfy, "") if isinstance(interpreter, comfy_checkout.Interpreter) else (None, interpreter)


def example_prompts() -> dict[str, dict]:
    """{workflow name: API-format prompt} of every example workflow's twin in example_workflows/api/."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((EXAMPLES / "api").glob("*.json"))}


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    """Ids of the prompt's nodes of one type."""
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def run_inprocess(script: Path, comfy: Path, work: Path, names: Sequence[str], timeout: int = 900) -> None:
    """Run ``script COMFY WORK NAME...`` in ComfyUI's interpreter ($COMFYUI_PYTHON) with ``work`` as its folder and
    assert that it exits 0 and prints ``NAME: ok`` for every name (its in-process checks, see comfy_inprocess.py)."""
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    done = subprocess.run(
        [python, str(script), str(comfy), str(work), *names],
        cwd=work,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{names} failed in {comfy}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    for name in names:
        assert f"{name}: ok" in done.stdout, done.stdout[-3000:]


def bundled_tokenizer(comfy: Path) -> Path:
    return comfy / "comfy" / "text_encoders" / "t5_tokenizer"


# Test-only sitecustomize for the server: CPU ``torch.empty`` of 1 MiB or more returns zeroed memory (calloc'd
# through numpy, so untouched pages stay shared zero pages). ComfyUI builds a full T5-XXL for CLIPLoader(type pixart)
# and leaves the weights a file lacks uninitialised; the small T5-XXL stand-in of scripts/tiny_weights.py relies on
# those reading as zeros, which plain ``torch.empty`` does not promise (reused memory may hold NaNs).
ZEROED_EMPTY = """
import math

import numpy as np
import torch

_empty = torch.empty


def _zeroed_empty(*size, dtype=None, device=None, **kwargs):
    shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
    dtype = dtype or torch.get_default_dtype()
    on_cpu = device is None or torch.device(device).type == "cpu"
    if kwargs or not on_cpu or not all(isinstance(n, int) for n in shape):
        return _empty(*size, dtype=dtype, device=device, **kwargs)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < 1 << 20:
        return _empty(*size, dtype=dtype, device=device, **kwargs)
    return torch.from_numpy(np.zeros(nbytes, np.uint8)).view(dtype).view(shape)


torch.empty = _zeroed_empty
"""


def start_server(comfy: Path, base: Path):
    """A started ``ComfyServer`` on loopback (CPU) with ``base`` as its base directory and ZEROED_EMPTY loaded."""
    site = base / "test-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(ZEROED_EMPTY)
    interpreter = _interpreter(comfy)
    paths = [str(site), interpreter.env.get("PYTHONPATH", os.environ.get("PYTHONPATH"))]
    env = {**interpreter.env, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    server = ComfyServer(
        comfy, base, interpreter.python, cpu=True, extra_args=["--preview-method", "latent2rgb"], env=env
    )
    return server.start()


# --- a stand-in ComfyUI for tests without one ---------------------------------------------------------------------

# Names present in ComfyUI 0.3.64 and 0.33 (comfy.samplers.KSampler.SAMPLERS / SCHEDULERS); a subset is enough here.
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "lms", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m",
            "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm", "uni_pc", "ddim"]  # fmt: skip
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"]
MODEL_FILES = {
    "diffusion_models": ["PixArt-Sigma-XL-2-1024-MS.pth", "PixArt-Sigma-XL-2-2K-MS.pth", "PixArt-XL-2-1024-MS.pth"],
    "checkpoints": ["sd_xl_base_1.0.safetensors"],
    "text_encoders": ["t5xxl_fp16.safetensors"],
    "vae": ["sdxl_vae.safetensors", "vae-ft-mse-840000-ema-pruned.safetensors"],
    "loras": ["pixart_style.safetensors"],
    "controlnet": ["pixart_sigma_controlnet_canny.safetensors", "PixArt-XL-2-1024-ControlNet.pth"],
}


def install_comfy_stubs(monkeypatch, models_root: Path) -> None:
    """Minimal ``folder_paths``, ``comfy.samplers`` and ``comfy.model_management`` in ``sys.modules`` (undone by
    ``monkeypatch``): enough for INPUT_TYPES and the pure parts of the nodes. Each model kind's folder is
    ``models_root/<kind>``; the file lists are MODEL_FILES plus what lies in those folders."""
    import types

    import torch

    def get_folder_paths(kind):
        return [str(models_root / kind)]

    def get_filename_list(kind):
        folder = models_root / kind
        found = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
        return sorted(set(MODEL_FILES.get(kind, [])) | set(found))

    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_folder_paths, folder_paths.get_filename_list = get_folder_paths, get_filename_list
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    samplers = types.ModuleType("comfy.samplers")
    samplers.KSampler = type("KSampler", (), {"SAMPLERS": SAMPLERS, "SCHEDULERS": SCHEDULERS})
    mm = types.ModuleType("comfy.model_management")
    cpu = torch.device("cpu")
    for name in ("intermediate_device", "get_torch_device", "text_encoder_device", "text_encoder_offload_device"):
        setattr(mm, name, lambda: cpu)
    mm.free_memory = lambda *args, **kwargs: None
    mm.module_size = lambda module: 0
    mm.__file__ = str(models_root / "comfy" / "model_management.py")
    comfy.samplers, comfy.model_management = samplers, mm
    for name, module in {"folder_paths": folder_paths, "comfy": comfy, "comfy.samplers": samplers,
                         "comfy.model_management": mm}.items():  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
