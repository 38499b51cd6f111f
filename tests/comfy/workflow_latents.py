"""The latents every saved workflow gives, recorded before the "one house" rework (issue 19) and compared after it.

Each example workflow (example_workflows/api/) and each 0.1 workflow (tests/fixtures/workflows_v0_1/api/) runs at
256 px with few steps, fp32 T5, on the tiny random weights of scripts/tiny_weights.py, with a SaveLatent after its
(last) sampler: the examples one PixArt Sigma Sampler / KSampler samples as ``fast`` makes them (3 steps), the
recipe examples (SamplerCustomAdvanced, two KSamplerAdvanced) as ``reduced`` makes them. The latents of one ComfyUI
tree lie in ``tests/fixtures/latents_one_house/<ComfyUI version>.safetensors`` under ``<source>/<name>``.

Record (only to capture a known-good state; the tests compare against the files):
    COMFYUI_PATH=/path/to/ComfyUI <its python> tests/comfy/workflow_latents.py
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "example_workflows" / "api"
V0_1 = REPO / "tests" / "fixtures" / "workflows_v0_1" / "api"
RECORDED = REPO / "tests" / "fixtures" / "latents_one_house"
STEPS = 3  # of the examples one sampler samples
SOURCES = {"examples": EXAMPLES, "v0_1": V0_1}


def prompts_of(source: str) -> dict[str, dict]:
    """{name: API prompt} of the example workflows ("examples") or of those shipped with 0.1 ("v0_1")."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(SOURCES[source].glob("*.json"))}


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    """Ids of the prompt's nodes of one type."""
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def one_sampler(prompt: dict) -> bool:
    """Whether one PixArt Sigma Sampler or KSampler samples the prompt (else it is a recipe example)."""
    return bool(nodes_of(prompt, "PixArtSigmaSampler") + nodes_of(prompt, "KSampler"))


def fast(prompt: dict, name: str, steps: int = STEPS, seed: int | None = None) -> dict:
    """A copy of an example prompt that runs in seconds on a CPU (256 px, few steps, fp32 T5) and saves its latent."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "PixArtSigmaResolution":
            inputs["base"] = "256"
        elif node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = 256
        elif node["class_type"] == "PixArtSigmaT5Loader":
            inputs["dtype"] = "fp32"
        elif node["class_type"] in ("PixArtSigmaSampler", "KSampler"):
            inputs["steps"] = steps
            inputs["seed"] = inputs["seed"] if seed is None else seed
            sampler_id = next(k for k, v in prompt.items() if v is node)
    prompt["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": name}}
    return prompt


def reduced(prompt: dict) -> dict:
    """A recipe example at 256 px (the 4K one: 256 px bins of the same aspect ratio) and 2 steps (the 900M one: 4
    steps handing over at 2), with the 4K one's tiled decode still cutting the image into tiles."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "PixArtSigmaResolution":
            inputs["base"] = "256"
        elif kind == "PixArtSigmaSampler":
            inputs["steps"] = 2
        elif kind == "KSamplerAdvanced":
            inputs["steps"] = 4
            inputs["end_at_step"] = 2 if inputs["end_at_step"] == 10 else inputs["end_at_step"]
            inputs["start_at_step"] = 2 if inputs["start_at_step"] == 10 else inputs["start_at_step"]
        elif kind == "VAEDecodeTiled":
            inputs["tile_size"], inputs["overlap"] = 128, 32
        elif kind == "PixArtSigmaT5Loader":
            inputs["dtype"] = "fp32"
    return prompt


def final_sampler(prompt: dict) -> str:
    """The node whose output the prompt decodes: SamplerCustomAdvanced, or the KSamplerAdvanced that adds no noise."""
    last = nodes_of(prompt, "SamplerCustomAdvanced") + [
        n for n in nodes_of(prompt, "KSamplerAdvanced") if prompt[n]["inputs"]["add_noise"] == "disable"
    ]
    (node_id,) = last
    return node_id


def latent_prompt(source: str, name: str) -> dict:
    """The workflow as recorded: small, with a SaveLatent after its (last) sampler."""
    prompt = prompts_of(source)[name]
    if one_sampler(prompt):
        return fast(prompt, f"test_{source}_{name}")
    prompt = reduced(prompt)
    prompt["900"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": [final_sampler(prompt), 0], "filename_prefix": f"test_{source}_{name}"},
    }
    return prompt


def cases() -> list[tuple[str, str]]:
    """(source, name) of every recorded workflow: all but the ControlNet examples (tests/comfy/test_controlnet_node.py
    runs those, on a tiny DiT of 2 blocks) and the training examples, which sample a freshly trained model
    (tests/comfy/test_training_nodes.py runs those)."""
    return [
        (source, name)
        for source in SOURCES
        for name, prompt in prompts_of(source).items()
        if name not in controlnet_examples() and not nodes_of(prompt, "PixArtSigmaTrain")
    ]


def controlnet_examples() -> dict[str, dict]:
    """{name: API prompt} of the example workflows with a PixArt ControlNet."""
    return {n: p for n, p in prompts_of("examples").items() if nodes_of(p, "PixArtSigmaControlNetLoader")}


def recording(version: str) -> Path:
    return RECORDED / f"{version}.safetensors"


def record(comfy: Path) -> Path:
    """Run every case through a ComfyUI server of ``comfy`` (run by this interpreter) on tiny weights and write the
    latents."""
    import tempfile

    import torch
    from safetensors.torch import load_file, save_file

    sys.path[:0] = [str(REPO), str(Path(__file__).parent)]
    from comfy_session import Comfy, start_server

    from scripts import tiny_weights
    from scripts.comfy_tree import comfy_version

    torch.set_num_threads(2)
    latents = {}
    with tempfile.TemporaryDirectory(prefix="pixart-record-") as folder:
        base = Path(folder)
        prompts = {f"{s}/{n}": latent_prompt(s, n) for s, n in cases()}
        tiny_weights.write_tiny_models(base / "models", list(prompts.values()))
        server = start_server(Comfy(comfy, comfy_version(comfy), base, package=""))
        try:
            for key, prompt in prompts.items():
                entry = server.run(prompt, timeout=900)
                (info,) = [x for out in entry["outputs"].values() for x in out.get("latents", [])]
                path = base / "output" / info["subfolder"] / info["filename"]
                latents[key] = load_file(str(path))["latent_tensor"].contiguous()
                print(f"{key}: {tuple(latents[key].shape)}", flush=True)
        finally:
            server.stop()
    out = recording(comfy_version(comfy))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(latents, str(out), metadata={"recipe": "tests/comfy/workflow_latents.py", "tree": comfy_version(comfy)})
    return out


if __name__ == "__main__":
    import os

    print(record(Path(os.environ["COMFYUI_PATH"])))
