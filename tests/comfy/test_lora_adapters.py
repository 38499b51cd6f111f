"""PixArt Sigma LoRA Loader inside the session's ComfyUI machinery (marker ``comfy``): files trained by ComfyUI's own
TrainLoraNode (LoRA, LoHa, LoKr, OFT) equal ComfyUI's LoraModelLoader on the trained result and differ without their
bias updates; synthetic LyCORIS / DoRA / PEFT files (tests/lora_fixtures.py ``KINDS``, PEFT ``lora_bias`` and
``use_dora``) equal the formulas' merged weights; all applied by our loader through ComfyUI's weight adapters, on our
MODEL of a 2-block tiny PixArt-Sigma."""

from __future__ import annotations

import json

import pytest
from lora_fixtures import KINDS
from model_setup import Setup
from node_calls import assert_close

pytestmark = pytest.mark.comfy
TRAINED = ["LoRA", "LoHa", "LoKr", "OFT"]  # TrainLoraNode's algorithms in 0.3.64 and 0.33 (weight_adapter.adapter_maps)
STRENGTH = 0.8
TRAIN = {"steps": 3, "learning_rate": 0.01, "rank": 4, "training_dtype": "fp32", "lora_dtype": "fp32", "seed": 5}
NAMINGS_OF = {"loha": "simpletuner-lycoris", "lokr": "kohya-lycoris", "dora": "onetrainer", "oft": "comfyui"}
NAMINGS_OF["lora-bias"] = "diffusers"


def run_node(cls, **given):
    """A stock node's outputs, its inputs at their defaults but ``given``: V3 (``define_schema``, lists for
    ``is_input_list``) or V1 (``INPUT_TYPES`` and ``FUNCTION``)."""
    if hasattr(cls, "define_schema"):
        schema = cls.define_schema()
        values = {i.id: given.get(i.id, getattr(i, "default", None)) for i in schema.inputs}
        if schema.is_input_list:
            values = {name: [value] for name, value in values.items()}
        output = cls.execute(**values)
        return output.result if hasattr(output, "result") else output
    spec = cls.INPUT_TYPES()["required"]
    values = {name: given[name] if name in given else options[1].get("default") for name, options in spec.items()}
    values.update({k: v for k, v in given.items() if k not in values})
    return getattr(cls(), cls.FUNCTION)(**values)


class Loras:
    """Our loader node reading ``work/loras`` only, and ComfyUI's output folder in ``work/output``, for one test
    (undone by ``monkeypatch``)."""

    def __init__(self, comfyui, work, monkeypatch):
        import folder_paths

        self.folder = work / "loras"
        self.folder.mkdir(exist_ok=True)
        monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(self.folder)], {".safetensors"}))
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
        monkeypatch.setattr(folder_paths, "output_directory", str(work / "output"))
        self.node = comfyui.module("nodes.lora_loader").PixArtSigmaLoraLoader

    def apply(self, model, name: str, strength: float = STRENGTH):
        """Our PixArt Sigma LoRA Loader on ``name`` (in ``self.folder``)."""
        output = self.node.execute(model, name, strength)
        return output.result[0] if hasattr(output, "result") else output[0]

    def save(self, name: str, tensors: dict) -> str:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self.folder / name))
        return name


@pytest.fixture(scope="module")
def s(comfyui, tmp_path_factory) -> Setup:
    return Setup(comfyui, tmp_path_factory.mktemp("lora-adapters"))


def patched_state(model) -> dict:
    """The DiT's weights with the ModelPatcher's patches applied (official keys, copies); the model is unpatched."""
    model.patch_model()
    try:
        return {k: v.detach().float().clone() for k, v in model.model.diffusion_model.state_dict().items()}
    finally:
        model.unpatch_model()


def algorithms() -> list[str]:
    """The algorithms the tree's TrainLoraNode offers."""
    from comfy.weight_adapter import adapter_maps

    return list(adapter_maps)


@pytest.mark.parametrize("algorithm", TRAINED)
def test_trained(s: Setup, tmp_path, monkeypatch, algorithm: str) -> None:
    """TrainLoraNode (a few steps) -> SaveLoRA -> our loader equals ComfyUI's LoraModelLoader on the trained
    result (sampled latents, <= 1e-5 relative), at strength 0.8 and 1; the saved file without its ``diff_b`` bias
    updates does not; strength 0 is the model without LoRA."""
    import comfy_extras.nodes_train as train
    import torch
    from safetensors.torch import load_file

    assert algorithm in algorithms(), f"this tree's TrainLoraNode offers {algorithms()}, not {algorithm}"
    loras = Loras(s.comfyui, tmp_path, monkeypatch)
    model = s.model()
    latents = {"samples": torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))}
    outputs = run_node(train.TrainLoraNode, model=model, latents=latents, positive=s.conds()[0],
                       algorithm=algorithm, gradient_checkpointing=False, **TRAIN)  # fmt: skip
    (trained,) = [x for x in outputs if isinstance(x, dict) and any(k.startswith("diffusion_model.") for k in x)]
    run_node(train.SaveLoRA, lora=trained, prefix="loras/trained", steps=TRAIN["steps"])
    (saved,) = (tmp_path / "output" / "loras").glob("trained_*.safetensors")
    tensors = load_file(str(saved))
    assert tensors.keys() == trained.keys(), "SaveLoRA wrote other keys than TrainLoraNode returned"
    assert any(k.endswith(".diff_b") for k in tensors), sorted(tensors)[:8]
    name = loras.save("trained.safetensors", tensors)
    plain = s.sample(model, steps=2)
    for strength in (STRENGTH, 1.0):
        want = s.sample(run_node(train.LoraModelLoader, model=model, lora=trained, strength_model=strength)[0], 2)
        assert_close(s.sample(loras.apply(model, name, strength), steps=2), want, f"{algorithm} at {strength}")
        assert ((want - plain).abs().max() / plain.abs().max()).item() > 1e-3, "the trained LoRA changed nothing"
    no_bias = loras.save("no_bias.safetensors", {k: v for k, v in tensors.items() if not k.endswith(".diff_b")})
    stripped = s.sample(loras.apply(model, no_bias, 1.0), steps=2)
    err = ((stripped - want).abs().max() / want.abs().max()).item()
    assert err > 1e-3, f"{algorithm}: dropping the trained biases changed the result by only {err:.1e}"
    assert torch.equal(s.sample(loras.apply(model, name, 0.0), steps=2), plain), "strength 0 is not the plain model"
    print(f"{algorithm}: {len(tensors)} tensors, without biases off by {err:.1e}")


@pytest.mark.parametrize("kind", KINDS)
def test_synthetic(s: Setup, tmp_path, monkeypatch, kind: str) -> None:
    """A synthetic ``kind`` file (tests/lora_fixtures.py) through our loader equals the formulas' merged weights
    (<= 1e-5 per weight), at strength 0.8; strength 0 leaves the weights as they are."""
    import lora_fixtures
    from safetensors.torch import load_file

    loras = Loras(s.comfyui, tmp_path, monkeypatch)
    model = s.model()
    base = load_file(str(s.path))
    naming = NAMINGS_OF[kind]
    tensors = lora_fixtures.synthetic_file(base, kind, naming, seed=4)
    name = loras.save(f"{kind}.safetensors", tensors)
    got = patched_state(loras.apply(model, name))
    want = lora_fixtures.formula_state(base, tensors, kind, naming, STRENGTH)
    _compare(got, want, base, f"{kind} ({naming})")
    assert _same(patched_state(loras.apply(model, name, 0.0)), base), "strength 0 changed weights"


@pytest.mark.parametrize("option", ["lora_bias", "use_dora"])
def test_peft(s: Setup, tmp_path, monkeypatch, option: str) -> None:
    """A PEFT adapter folder (diffusers names) with ``lora_B`` biases or DoRA magnitudes, written as
    ``save_pretrained`` writes it, through our loader equals ``pixart.lora.merge_lora`` of it (itself equal to
    PEFT's own merge: tests/test_lora_formats.py)."""
    import torch
    from safetensors.torch import load_file, save_file

    import pixart.lora

    loras = Loras(s.comfyui, tmp_path, monkeypatch)
    model = s.model()
    base = load_file(str(s.path))
    g = torch.Generator().manual_seed(6)
    folder = loras.folder / option
    folder.mkdir()
    state = {}
    modules = [("transformer_blocks.0.attn1.to_k", "blocks.0.attn.qkv"), ("proj_out", "final_layer.linear"),
               ("transformer_blocks.1.attn2.to_v", "blocks.1.cross_attn.kv_linear")]  # fmt: skip
    for module, official in modules:
        chunks = 3 if "attn1" in module else 2 if "attn2" in module else 1
        rows, width = base[f"{official}.weight"].shape[0] // chunks, base[f"{official}.weight"].shape[1]
        prefix = f"base_model.model.{module}"
        state[f"{prefix}.lora_A.weight"] = torch.randn(4, width, generator=g) * 0.05
        state[f"{prefix}.lora_B.weight"] = torch.randn(rows, 4, generator=g) * 0.05
        extra = "lora_B.bias" if option == "lora_bias" else "lora_magnitude_vector"
        state[f"{prefix}.{extra}"] = torch.rand(rows, generator=g) + 0.5
    save_file(state, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, option: True}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    got = patched_state(loras.apply(model, f"{option}/"))
    want = pixart.lora.merge_lora(base, folder, STRENGTH)
    _compare(got, want, base, option)


def _compare(got: dict, want: dict, base: dict, what: str) -> None:
    changed = 0
    for key, weight in want.items():
        if key in got:
            assert_close(got[key], weight.float(), f"{what}: {key}")
            changed += not _same({key: got[key]}, {key: base[key]})
    assert changed, f"{what}: the LoRA changed no weight"


def _same(a: dict, b: dict) -> bool:
    import torch

    return all(torch.equal(a[k].float(), b[k].float()) for k in a if k in b)
