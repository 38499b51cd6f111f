"""PixArt ControlNets through ComfyUI's stock Apply ControlNet in the session's ComfyUI (marker ``comfy``): PixArt Sigma
ControlNet Loader -> Apply ControlNet (hint through a VAE) -> sampling equals ``pixart`` with ``control_hook`` on the
same weights, hint latent and noise (fp32 <= 1e-5 relative): strength 0 is the run without ControlNet, strength s
scales the residuals, start / end percent switch it per step, two chained ControlNets (official and diffusers-adapter
files) add, and with CFG each row gets the control Apply ControlNet attached to it; a missing VAE and a MODEL that is
not ours are refused. The example workflow (LoadImage -> Canny -> Apply ControlNet -> KSampler) runs headless
(scripts/run_workflow.py) on tiny weights, on the session's server."""

from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
from model_setup import CFG, WIDTH
from node_calls import add_model_folder, assert_close, node_result
from workflow_latents import controlnet_examples, nodes_of

pytestmark = pytest.mark.comfy
FILES = ("first.safetensors", "second_adapter.safetensors")  # official layout, 2 copies; diffusers adapter, 1 copy
TOL = 1e-5
TWO_BLOCK_DIT = "PixArt-Sigma-XL-2-1024-MS-2-blocks.pth"  # the ControlNet example's DiT in the headless run


class Setup:
    """A 3-block tiny PixArt-Sigma file (WIDTH wide), two ControlNets of it, a tiny VAE, conditioning, noise and a
    hint image."""

    def __init__(self, comfyui, work: Path):
        import comfy.sd
        import torch
        from safetensors.torch import save_file

        from scripts import tiny_controlnet, tiny_weights

        self.torch = torch
        self.comfy_model = comfyui.module("nodes.dit.model")
        self.loader = comfyui.module("nodes.controlnet").PixArtSigmaControlNetLoader
        self.path = work / "tiny_sigma.safetensors"
        dit = tiny_weights.dit_state_dict("sigma-1024", depth=3, seed=3, hidden=WIDTH)
        save_file(dit, str(self.path))
        self.folder = work / "controlnet"
        self.folder.mkdir()
        first = tiny_controlnet.controlnet_state_dict(dit, copies=2, seed=1, scale=0.05)
        save_file(first, str(self.folder / FILES[0]))
        second = tiny_controlnet.controlnet_state_dict(dit, copies=1, seed=2, scale=0.05)
        save_file(tiny_controlnet.adapter_state_dict(second), str(self.folder / FILES[1]))
        self.vae = comfy.sd.VAE(sd=tiny_weights.vae_state_dict(0.13025))
        g = torch.Generator().manual_seed(11)
        self.pos = torch.randn(1, 9, 4096, generator=g)
        self.neg = torch.randn(1, 4, 4096, generator=g)
        self.noise = torch.randn(1, 4, 32, 32, generator=g)
        self.image = torch.rand(1, 256, 256, 3, generator=g)

    def controlnets(self, monkeypatch) -> list:
        """Both ControlNets through PixArt Sigma ControlNet Loader, from a models/controlnet folder of this test."""
        add_model_folder(monkeypatch, "controlnet", self.folder)
        return [node_result(self.loader.execute(name)) for name in FILES]

    def model(self):
        return self.comfy_model.load_model(self.path, "auto", self.torch.float32)

    def conds(self):
        ones = self.torch.ones
        return [[self.pos, {"attention_mask": ones(1, 9)}]], [[self.neg, {"attention_mask": ones(1, 4)}]]

    def apply(self, positive, negative, controlnet, strength, start=0.0, end=1.0, vae=True):
        import nodes as comfy_nodes  # ComfyUI's nodes.py

        node = comfy_nodes.ControlNetApplyAdvanced()
        vae = self.vae if vae else None
        return node.apply_controlnet(positive, negative, controlnet, self.image, strength, start, end, vae=vae)

    def sample(self, model, positive, negative, steps=1):
        import comfy.sample

        latent = self.torch.zeros_like(self.noise)
        out = comfy.sample.sample(
            model, self.noise, steps, CFG, "euler", "normal", positive, negative, latent, seed=0, disable_pbar=True
        )
        return out * model.model.latent_format.scale_factor

    def reference(self, model, steps, controls_pos, controls_neg, active=lambda sigma: True):
        """Euler with CFG on ``pixart``'s model of the same file; ``controls_*``: [(ControlNet index, scale)] on the
        positive / negative rows, on at the steps where ``active(sigma)``."""
        import comfy.samplers

        import pixart
        from pixart.controlnet import control_hook, load_controlnet

        torch = self.torch
        base = pixart.load_dit(self.path, "auto", torch.float32, token_chunk=None)
        controlnets = [load_controlnet(self.folder / name) for name in FILES]
        sampling = model.get_model_object("model_sampling")
        hint = model.model.latent_format.process_in(self.vae.encode(self.image))
        sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)
        x = self.noise * torch.sqrt(1 + sigmas[0] ** 2)

        def denoised(x, sigma, caption, controls):
            t = sampling.timestep(sigma).reshape(1)
            x_in = x / torch.sqrt(sigma**2 + 1)
            hooks = [control_hook(controlnets[i], base, hint, s) for i, s in controls if active(sigma)]
            with torch.no_grad():
                eps = base(x_in, t, caption, torch.ones(caption.shape[:2]), block_hooks=hooks)[:, :4]
            return x - eps * sigma

        for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
            cond, uncond = denoised(x, sigma, self.pos, controls_pos), denoised(x, sigma, self.neg, controls_neg)
            d = uncond + CFG * (cond - uncond)
            x = d + (x - d) * following / sigma if following > 0 else d
        return x


@pytest.fixture(scope="module")
def s(comfyui, tmp_path_factory):
    return Setup(comfyui, tmp_path_factory.mktemp("controlnet"))


def test_strength_scales_the_residuals(s, monkeypatch):
    """Strength 0 equals no ControlNet (Apply ControlNet leaves the conditioning alone; a ControlNet set to 0 on the
    conditioning adds zeros); strength 0.7 equals pixart with the residuals times 0.7 on both CFG rows."""
    torch = s.torch
    (first, _), model = s.controlnets(monkeypatch), s.model()
    positive, negative = s.conds()
    plain = s.sample(model, positive, negative)
    assert_close(plain, s.reference(model, 1, [], []), "no ControlNet vs pixart")
    assert torch.equal(s.sample(model, *s.apply(positive, negative, first, 0.0)), plain), "strength 0 changed the run"
    zeroed = s.apply(positive, negative, first, 1.0)
    zeroed[0][0][1]["control"].strength = 0.0  # the same object on both rows
    assert torch.equal(s.sample(model, *zeroed), plain), "a ControlNet at strength 0 changed the run"
    got = s.sample(model, *s.apply(positive, negative, first, 0.7))
    assert_close(got, s.reference(model, 1, [(0, 0.7)], [(0, 0.7)]), "strength 0.7", TOL)
    assert (got - plain).abs().max() > 1e-3 * plain.abs().max(), "the ControlNet changed nothing"


@pytest.mark.parametrize(("start", "end"), [(0.0, 0.5), (0.5, 1.0)])
def test_start_and_end_percent_switch_it_per_step(s, monkeypatch, start, end):
    """start / end percent switch the ControlNet per step, at ComfyUI's sigmas for those percents."""
    first, _ = s.controlnets(monkeypatch)
    model = s.model()
    sampling = model.get_model_object("model_sampling")
    positive, negative = s.conds()
    steps = 4
    high, low = float(sampling.percent_to_sigma(start)), float(sampling.percent_to_sigma(end))
    got = s.sample(model, *s.apply(positive, negative, first, 1.0, start, end), steps=steps)
    want = s.reference(model, steps, [(0, 1.0)], [(0, 1.0)], lambda sigma: low <= float(sigma) <= high)
    assert_close(got, want, f"percent {start}..{end}", TOL)
    always = s.reference(model, steps, [(0, 1.0)], [(0, 1.0)])
    never = s.reference(model, steps, [], [])
    for other, what in ((always, "on every step"), (never, "off")):
        assert (got - other).abs().max() > 1e-4 * other.abs().max(), f"{start}..{end} equals the run {what}"


def test_chained_controlnets_add(s, monkeypatch):
    """Two chained ControlNets (official layout, strength 0.6, then the diffusers adapter, strength 0.9) add."""
    first, second = s.controlnets(monkeypatch)
    model = s.model()
    positive, negative = s.conds()
    once = s.apply(positive, negative, first, 0.6)
    both = s.apply(*once, second, 0.9)
    assert both[0][0][1]["control"].previous_controlnet is once[0][0][1]["control"]
    got = s.sample(model, *both)
    want = s.reference(model, 1, [(0, 0.6), (1, 0.9)], [(0, 0.6), (1, 0.9)])
    assert_close(got, want, "two chained ControlNets", TOL)


def test_each_cfg_row_gets_its_own_control(s, monkeypatch):
    """With CFG, each row gets the control Apply ControlNet attached to it: on the positive only (negative taken from
    before Apply), and different ControlNets on the two rows."""
    first, second = s.controlnets(monkeypatch)
    model = s.model()
    positive, negative = s.conds()
    controlled, _ = s.apply(positive, negative, first, 0.8)
    got = s.sample(model, controlled, negative)
    assert_close(got, s.reference(model, 1, [(0, 0.8)], []), "ControlNet on the positive only", TOL)
    _, neg_only = s.apply(positive, negative, second, 1.2)
    pos_only, _ = s.apply(positive, negative, first, 0.5)
    got = s.sample(model, pos_only, neg_only)
    assert_close(got, s.reference(model, 1, [(0, 0.5)], [(1, 1.2)]), "different ControlNets per row", TOL)


def test_missing_vae_and_foreign_model_are_refused(s, monkeypatch):
    """No VAE on Apply ControlNet is refused by ComfyUI; a MODEL that is not ours (ComfyUI's own PixArt) by pre_run,
    naming our DiT loader."""
    first, _ = s.controlnets(monkeypatch)
    positive, negative = s.conds()
    with pytest.raises(ValueError, match="needs a VAE"):
        s.sample(s.model(), *s.apply(positive, negative, first, 1.0, vae=False))
    other = types.SimpleNamespace(diffusion_model=s.torch.nn.Identity(), model_sampling=None)
    with pytest.raises(ValueError, match="not a PixArt model from PixArt Sigma DiT Loader"):
        first.copy().pre_run(other, lambda percent: percent)


def test_example_workflow_runs_headless_with_tiny_models(comfyui, models, runner, tmp_path):
    """scripts/run_workflow.py on the ControlNet example, on the session's server (session_runner.py) and its tiny
    models, at 256 px and 2 steps: its DiT replaced by a 2-block one (the session's example DiT has 1 block; the
    ControlNet's residual goes to block 1), the ControlNet, T5, VAE and control image the session's. (``--tiny``
    would write stand-ins in the runner's own base folder, which the session's server does not read: the runner's
    --tiny path is tests/comfy/test_main_job.py's.)"""
    import json

    from scripts import tiny_weights

    (prompt,) = controlnet_examples().values()
    prompt = copy.deepcopy(prompt)
    (dit_id,) = nodes_of(prompt, "PixArtSigmaDiTLoader")
    prompt[dit_id]["inputs"]["ckpt_name"] = TWO_BLOCK_DIT
    dit = models / "diffusion_models" / TWO_BLOCK_DIT
    if not dit.exists():  # what run_workflow --tiny writes for this example: 2 blocks, the ControlNet's base
        tiny_weights.write(dit, tiny_weights.dit_state_dict("sigma-1024", depth=2))
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=256, height=256)
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    workflow = tmp_path / "controlnet.json"
    workflow.write_text(json.dumps(prompt))
    out = tmp_path / "out"
    code, log = runner(str(workflow), "--comfy", str(comfyui.root), "--out", str(out), "--models", str(models))
    assert code == 0, log[-4000:]
    assert "node 13 ControlNetApplyAdvanced" in log, log[-4000:]
    (image,) = out.glob("PixArtSigmaControlNet_*.png")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
