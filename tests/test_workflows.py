"""The example workflows without ComfyUI: UI files (as the frontend saves them) and their API twins reference only our
nodes and stock ones, with valid widget values and consistent links. Stock node specs are written out below from
ComfyUI 0.3.64-0.33 (same inputs in both); ours come from the nodes' V3 schemas, with ComfyUI stubbed.

Checked for the examples shipped now and for the four shipped with 0.1 (tests/fixtures/workflows_v0_1/, kept as
saved: users' files must keep loading, widget by widget, through the V3 nodes)."""

from __future__ import annotations

import json

import pytest
from comfy_host import EXAMPLES, MODEL_FILES, SAMPLERS, SCHEDULERS, install_comfy_stubs
from node_pack import REPO, install_comfy_api_stub, load_pack, v1_inputs, v1_outputs

SEED = ("INT", {"min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True})
STOCK = {  # type -> (inputs in ComfyUI's order, output types)
    "KSampler": (
        {
            "model": ("MODEL", {}),
            "seed": SEED,
            "steps": ("INT", {"min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"min": 0.0, "max": 100.0}),
            "sampler_name": (SAMPLERS, {}),
            "scheduler": (SCHEDULERS, {}),
            "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}),
            "latent_image": ("LATENT", {}),
            "denoise": ("FLOAT", {"min": 0.0, "max": 1.0}),
        },
        ["LATENT"],
    ),
    "EmptyLatentImage": (
        {n: ("INT", {"min": 16, "max": 16384}) for n in ("width", "height")} | {"batch_size": ("INT", {"min": 1})},
        ["LATENT"],
    ),
    "VAELoader": ({"vae_name": (MODEL_FILES["vae"], {})}, ["VAE"]),
    "VAEDecode": ({"samples": ("LATENT", {}), "vae": ("VAE", {})}, ["IMAGE"]),
    "SaveImage": ({"images": ("IMAGE", {}), "filename_prefix": ("STRING", {})}, []),
    "VAEDecodeTiled": (
        {"samples": ("LATENT", {}), "vae": ("VAE", {}), "tile_size": ("INT", {"min": 64, "max": 4096})}
        | {"overlap": ("INT", {"min": 0, "max": 4096}), "temporal_size": ("INT", {"min": 8, "max": 4096})}
        | {"temporal_overlap": ("INT", {"min": 4, "max": 4096})},
        ["IMAGE"],
    ),
    "KSamplerAdvanced": (
        {
            "model": ("MODEL", {}),
            "add_noise": (["enable", "disable"], {}),
            "noise_seed": SEED,
            "steps": ("INT", {"min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"min": 0.0, "max": 100.0}),
            "sampler_name": (SAMPLERS, {}),
            "scheduler": (SCHEDULERS, {}),
            "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}),
            "latent_image": ("LATENT", {}),
            "start_at_step": ("INT", {"min": 0, "max": 10000}),
            "end_at_step": ("INT", {"min": 0, "max": 10000}),
            "return_with_leftover_noise": (["disable", "enable"], {}),
        },
        ["LATENT"],
    ),
    "RandomNoise": ({"noise_seed": SEED}, ["NOISE"]),
    "CFGGuider": (
        {"model": ("MODEL", {}), "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {})}
        | {"cfg": ("FLOAT", {"min": 0.0, "max": 100.0})},
        ["GUIDER"],
    ),
    "SamplerCustomAdvanced": (
        {"noise": ("NOISE", {}), "guider": ("GUIDER", {}), "sampler": ("SAMPLER", {}), "sigmas": ("SIGMAS", {})}
        | {"latent_image": ("LATENT", {})},
        ["LATENT", "LATENT"],
    ),
    "LoadImage": (
        {"image": (["pixart_controlnet_example.png"], {}), "upload": (["image"], {"ui_only": True})},
        ["IMAGE", "MASK"],
    ),
    "Canny": (
        {"image": ("IMAGE", {})}
        | {n: ("FLOAT", {"min": 0.01, "max": 0.99}) for n in ("low_threshold", "high_threshold")},
        ["IMAGE"],
    ),
    "ControlNetApplyAdvanced": (
        {"positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "control_net": ("CONTROL_NET", {})}
        | {"image": ("IMAGE", {}), "strength": ("FLOAT", {"min": 0.0, "max": 10.0})}
        | {n: ("FLOAT", {"min": 0.0, "max": 1.0}) for n in ("start_percent", "end_percent")}
        | {"vae": ("VAE", {})},
        ["CONDITIONING", "CONDITIONING"],
    ),
    "EasyCache": (
        {"model": ("MODEL", {})}
        | {n: ("FLOAT", {"min": 0.0, "max": m}) for n, m in (("reuse_threshold", 3.0), ("start_percent", 1.0))}
        | {"end_percent": ("FLOAT", {"min": 0.0, "max": 1.0}), "verbose": ("BOOLEAN", {})},
        ["MODEL"],
    ),
}
# DiT files the examples name beyond comfy_host.MODEL_FILES (the few-step, 900M and 4K examples).
EXAMPLE_DITS = ["PixArt-Alpha-DMD-XL-2-512x512.safetensors", "PixArt-LCM-XL-2-1024-MS.safetensors",
                "PixArt-Sigma-900M-stage-1.safetensors", "PixArt-Sigma-900M-stage-2.safetensors"]  # fmt: skip
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
V0_1 = REPO / "tests" / "fixtures" / "workflows_v0_1"
FOLDERS = {"examples": EXAMPLES, "v0_1": V0_1}
CASES = [(folder, p.stem) for folder, path in FOLDERS.items() for p in sorted(path.glob("*.json"))]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    models = tmp_path_factory.mktemp("models")
    (models / "diffusion_models").mkdir()
    for name in EXAMPLE_DITS:
        (models / "diffusion_models" / name).touch()
    install_comfy_stubs(monkeypatch, models)
    install_comfy_api_stub(monkeypatch)
    ours = {node.define_schema().node_id: (v1_inputs(node), v1_outputs(node)) for node in load_pack().NODES}
    yield {**STOCK, **ours}
    monkeypatch.undo()


def is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_KINDS


def check_value(where: str, spec, value) -> None:
    kind, options = spec
    if isinstance(kind, list):
        assert value in kind, f"{where}: {value!r} is not one of {kind[:8]}..."
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, int if kind == "INT" else (int, float)) and not isinstance(value, bool), where
        assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value} out of range"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    else:
        assert isinstance(value, str), where


def widget_values(where: str, node: dict, inputs: dict) -> dict:
    """{widget name: value} from a UI node's widgets_values (ComfyUI's input order; a seed with
    control_after_generate is followed by its control value)."""
    values, found = iter(node.get("widgets_values", [])), {}
    for input_name, spec in inputs.items():
        if is_widget(spec):
            found[input_name] = next(values)
            if spec[1].get("control_after_generate"):
                assert next(values) in CONTROL_VALUES, f"{where}: bad control_after_generate value"
    assert next(values, None) is None, f"{where}: more widget values than widgets"
    return found


def load(name: str, folder: str = "examples") -> tuple[dict, dict]:
    root = FOLDERS[folder]
    return json.loads((root / f"{name}.json").read_text()), json.loads((root / "api" / f"{name}.json").read_text())


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_the_examples_exist(folder):
    names = sorted(p.stem for p in FOLDERS[folder].glob("*.json"))
    assert sorted(p.stem for p in (FOLDERS[folder] / "api").glob("*.json")) == names
    assert len(names) == {"examples": 10, "v0_1": 4}[folder]
    if folder == "examples":
        assert all((EXAMPLES / f"{name}.jpg").is_file() for name in names)
    prompts = {name: load(name, folder)[1] for name in names}
    kinds = {name: {n["class_type"] for n in p.values()} for name, p in prompts.items()}
    inputs = {name: [n["inputs"] for n in p.values()] for name, p in prompts.items()}
    assert any({"PixArtSigmaDiTLoader", "KSampler"} <= k for k in kinds.values()), "no stock-KSampler example"
    assert any(
        i.get("kv_compress", "off") != "off" and i.get("variant") == "sigma-2k" for v in inputs.values() for i in v
    )
    assert any(i.get("model_family") == "alpha" for v in inputs.values() for i in v)
    assert all("SaveImage" in k and {"VAEDecode", "VAEDecodeTiled"} & k for k in kinds.values())


VAE_OF_FAMILY = {"alpha": "vae-ft-mse-840000-ema-pruned.safetensors", "sigma": "sdxl_vae.safetensors"}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_each_example_decodes_with_its_family_vae(folder):
    """PixArt-alpha latents are SD1.5-VAE latents, PixArt-Sigma's SDXL-VAE ones: the wrong VAE gives garbled images."""
    for path in sorted((FOLDERS[folder] / "api").glob("*.json")):
        prompt = json.loads(path.read_text())
        families = {n["inputs"]["model_family"] for n in prompt.values() if n["class_type"] == "PixArtSigmaTextEncode"}
        vaes = {n["inputs"]["vae_name"] for n in prompt.values() if n["class_type"] == "VAELoader"}
        assert len(families) == 1, f"{path.name}: text encodes of several families {families}"
        assert vaes == {VAE_OF_FAMILY[families.pop()]}, f"{path.name}: VAE {vaes}"


def test_the_recipe_examples():
    """One-step (DMD), LCM 4 steps, the 900M two-stage hand-over and 4K, each wired as its reference samples."""
    prompts = {name: load(name)[1] for name in ("pixart_alpha_dmd_one_step", "pixart_alpha_lcm_4_steps",
               "pixart_sigma_900m_two_stage", "pixart_sigma_4k_kv_compress")}  # fmt: skip

    def of(name, kind):
        return [n["inputs"] for n in prompts[name].values() if n["class_type"] == kind]

    for name, recipe in (("pixart_alpha_dmd_one_step", "alpha-dmd-512"), ("pixart_alpha_lcm_4_steps", "lcm")):
        (schedule,) = of(name, "PixArtSigmaFewStepSchedule")
        (guider,) = of(name, "CFGGuider")
        assert schedule["recipe"] == recipe and guider["cfg"] == 1.0 and of(name, "SamplerCustomAdvanced")
    stages = of("pixart_sigma_900m_two_stage", "KSamplerAdvanced")
    assert [(s["start_at_step"], s["end_at_step"], s["return_with_leftover_noise"]) for s in stages] == [
        (0, 10, "enable"),
        (10, 10000, "disable"),
    ]
    assert [s["add_noise"] for s in stages] == ["enable", "disable"]
    assert all(s["model"][0] != stages[0]["model"][0] for s in stages[1:])  # a second (stage-2) MODEL
    schedules = of("pixart_sigma_900m_two_stage", "PixArtSigmaNoiseSchedule")
    assert schedules == [{**s, "prediction": "v_prediction", "zero_terminal_snr": True} for s in schedules]
    assert len(schedules) == 2
    (dit,) = of("pixart_sigma_4k_kv_compress", "PixArtSigmaDiTLoader")
    (resolution,) = of("pixart_sigma_4k_kv_compress", "PixArtSigmaResolution")
    assert dit["variant"] == "sigma-2k" and dit["kv_compress"] != "off" and resolution["base"] == "4096"
    assert of("pixart_sigma_4k_kv_compress", "VAEDecodeTiled")


@pytest.mark.parametrize(("folder", "name"), CASES)
def test_ui_workflow(specs, folder, name):
    ui, _ = load(name, folder)
    assert {"nodes", "links", "last_node_id", "last_link_id", "version"} <= set(ui)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and max(nodes) <= ui["last_node_id"]
    for node in ui["nodes"]:
        where = f"{name}: node {node['id']} {node['type']}"
        assert node["type"] in specs, f"{where}: not one of our nodes nor a known stock node"
        inputs, outputs = specs[node["type"]]
        for input_name, value in widget_values(where, node, inputs).items():
            check_value(f"{where}.{input_name}", inputs[input_name], value)
        sockets = {k: v[0] for k, v in inputs.items() if not is_widget(v)}
        assert {i["name"]: i["type"] for i in node["inputs"]} == sockets, where
        assert all(i["link"] is not None for i in node["inputs"]), f"{where}: an input is not connected"
        assert [o["type"] for o in node["outputs"]] == outputs, where
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind and link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["type"] == kind and nodes[dst]["inputs"][dst_slot]["link"] == link_id


@pytest.mark.parametrize(("folder", "name"), CASES)
def test_api_twin_matches(specs, folder, name):
    ui, api = load(name, folder)
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        inputs, _ = specs[node["type"]]
        given = api[str(node["id"])]["inputs"]
        ui_only = {k for k, v in inputs.items() if v[1].get("ui_only")}  # LoadImage's upload button
        assert set(given) == set(inputs) - ui_only, f"{name}: node {node['id']} inputs {set(given) ^ set(inputs)}"
        values = widget_values(f"{name}: node {node['id']}", node, inputs)
        values = {k: v for k, v in values.items() if k not in ui_only}
        assert {k: given[k] for k in values} == values, f"{name}: node {node['id']} widget values differ"
        for input_name, value in values.items():
            check_value(f"{name} (API): node {node['id']}.{input_name}", inputs[input_name], value)
        for socket in node["inputs"]:
            _, src, src_slot, _, _, kind = links[socket["link"]]
            assert given[socket["name"]] == [str(src), src_slot], f"{name}: node {node['id']}.{socket['name']}"
            assert specs[api[str(src)]["class_type"]][1][src_slot] == kind


def test_v0_1_widgets_line_up_with_the_v3_inputs(specs):
    """The 0.1 UI files store widget values by position: each lands on the input of the same name and meaning
    (the seed's control_after_generate value right after the seed)."""
    ui, _ = load("pixart_sigma_2k_kv_compress", "v0_1")
    by_type = {node["type"]: node for node in ui["nodes"]}
    dit = widget_values("dit", by_type["PixArtSigmaDiTLoader"], specs["PixArtSigmaDiTLoader"][0])
    assert dit["variant"] == "sigma-2k" and dit["kv_compress"] != "off" and isinstance(dit["kv_factor"], int)
    sampler_node = by_type["PixArtSigmaSampler"]
    sampler = widget_values("sampler", sampler_node, specs["PixArtSigmaSampler"][0])
    assert list(sampler) == ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert sampler_node["widgets_values"][1] in CONTROL_VALUES and sampler["cfg"] == 4.5
