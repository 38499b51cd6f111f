"""PixArt ControlNets through ComfyUI's stock Apply ControlNet, in one process of ComfyUI's interpreter with a
ComfyUI tree importable (tests/test_comfy_controlnet.py starts it): PixArt Sigma ControlNet Loader -> Apply ControlNet
(hint through a VAE) -> sampling equals ``pixart`` with ``control_hook`` on the same weights, hint latent and noise.

Usage: python tests/comfy_controlnet_inprocess.py COMFYUI_PATH WORK_DIR CHECK [CHECK ...]
Each check prints ``CHECK: ok``. Only WORK_DIR is written to (tiny files); the ComfyUI tree is read only.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_inprocess import PACK, assert_close, import_comfy, import_pack, node_result, sampling_scale  # noqa: E402

CFG = 4.5
TOL = 1e-5


class Setup:
    """A 3-block tiny PixArt-Sigma file, two 2-copy ControlNets of it, a tiny VAE, conditioning, noise and a hint."""

    def __init__(self, comfy_path: Path, work: Path):
        self.comfy_model = import_pack()  # also puts the repository on sys.path
        import comfy.sd
        import folder_paths
        import torch
        from safetensors.torch import save_file

        from scripts import tiny_controlnet, tiny_weights

        self.torch = torch
        self.path = work / "tiny_sigma.safetensors"
        dit = tiny_weights.dit_state_dict("sigma-1024", depth=3, seed=3)
        save_file(dit, str(self.path))
        folder = work / "controlnet"
        folder.mkdir(exist_ok=True)
        first = tiny_controlnet.controlnet_state_dict(dit, copies=2, seed=1, scale=0.05)
        save_file(first, str(folder / "first.safetensors"))
        second = tiny_controlnet.adapter_state_dict(tiny_controlnet.controlnet_state_dict(dit, 1, seed=2, scale=0.05))
        save_file(second, str(folder / "second_adapter.safetensors"))
        folder_paths.add_model_folder_path("controlnet", str(folder))
        self.vae = comfy.sd.VAE(sd=tiny_weights.vae_state_dict(0.13025))
        g = torch.Generator().manual_seed(11)
        self.pos = torch.randn(1, 9, 4096, generator=g)
        self.neg = torch.randn(1, 4, 4096, generator=g)
        self.noise = torch.randn(1, 4, 32, 32, generator=g)
        self.image = torch.rand(1, 256, 256, 3, generator=g)
        # ComfyUI's nodes.py (Apply ControlNet); the name "nodes" is this repository's package here
        spec = importlib.util.spec_from_file_location("comfy_stock_nodes", comfy_path / "nodes.py")
        self.stock = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.stock)
        loader = importlib.import_module(f"{PACK}.nodes.controlnet").PixArtSigmaControlNetLoader
        self.controlnets = [
            node_result(loader.execute(name)) for name in ("first.safetensors", "second_adapter.safetensors")
        ]

    def model(self):
        return self.comfy_model.load_model(self.path, "auto", self.torch.float32)

    def conds(self):
        ones = self.torch.ones
        return [[self.pos, {"attention_mask": ones(1, 9)}]], [[self.neg, {"attention_mask": ones(1, 4)}]]

    def apply(self, positive, negative, index, strength, start=0.0, end=1.0):
        node = self.stock.ControlNetApplyAdvanced()
        cnet = self.controlnets[index]
        return node.apply_controlnet(positive, negative, cnet, self.image, strength, start, end, vae=self.vae)

    def sample(self, model, positive, negative, steps=1):
        import comfy.sample

        latent = self.torch.zeros_like(self.noise)
        out = comfy.sample.sample(
            model, self.noise, steps, CFG, "euler", "normal", positive, negative, latent, seed=0, disable_pbar=True
        )
        return out * sampling_scale(model)

    def reference(self, model, steps, controls_pos, controls_neg, active=lambda sigma, index: True):
        """Euler with CFG on ``pixart``'s model of the same file; ``controls_*``: [(ControlNet index, scale)] on the
        positive / negative rows, each on at the steps where ``active(sigma, index)``."""
        import comfy.samplers

        import pixart
        from pixart.controlnet import control_hook, load_controlnet

        torch = self.torch
        base = pixart.load_dit(self.path, "auto", torch.float32, token_chunk=None)
        folder = self.path.parent / "controlnet"
        files = ("first.safetensors", "second_adapter.safetensors")
        cns = [load_controlnet(folder / name) for name in files]
        sampling = model.get_model_object("model_sampling")
        hint = model.model.latent_format.process_in(self.vae.encode(self.image))
        sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)
        x = self.noise * torch.sqrt(1 + sigmas[0] ** 2)

        def denoised(x, sigma, caption, controls):
            t = sampling.timestep(sigma).reshape(1)
            x_in = x / torch.sqrt(sigma**2 + 1)
            hooks = [control_hook(cns[i], base, hint, s) for i, s in controls if active(sigma, i)]
            with torch.no_grad():
                eps = base(x_in, t, caption, torch.ones(caption.shape[:2]), block_hooks=hooks)[:, :4]
            return x - eps * sigma

        for sigma, following in zip(sigmas[:-1], sigmas[1:], strict=True):
            cond, uncond = denoised(x, sigma, self.pos, controls_pos), denoised(x, sigma, self.neg, controls_neg)
            d = uncond + CFG * (cond - uncond)
            x = d + (x - d) * following / sigma if following > 0 else d
        return x


def check_strength(s: Setup) -> None:
    """Strength 0 equals no ControlNet (Apply ControlNet leaves the conditioning alone; a ControlNet set to 0 on the
    conditioning adds zeros); strength 0.7 equals pixart with the residuals times 0.7 on both CFG rows."""
    torch = s.torch
    model = s.model()
    positive, negative = s.conds()
    plain = s.sample(model, positive, negative)
    assert_close(plain, s.reference(model, 1, [], []), "no ControlNet vs pixart")
    assert torch.equal(s.sample(model, *s.apply(positive, negative, 0, 0.0)), plain), "strength 0 changed the run"
    zeroed = s.apply(positive, negative, 0, 1.0)
    zeroed[0][0][1]["control"].strength = 0.0  # the same object on both rows
    assert torch.equal(s.sample(model, *zeroed), plain), "a ControlNet at strength 0 changed the run"
    got = s.sample(model, *s.apply(positive, negative, 0, 0.7))
    assert_close(got, s.reference(model, 1, [(0, 0.7)], [(0, 0.7)]), "strength 0.7", TOL)
    assert (got - plain).abs().max() > 1e-3 * plain.abs().max(), "the ControlNet changed nothing"


def check_percent_range(s: Setup) -> None:
    """start / end percent switch the ControlNet per step, at ComfyUI's sigmas for those percents."""
    model = s.model()
    sampling = model.get_model_object("model_sampling")
    positive, negative = s.conds()
    steps = 4
    for start, end in ((0.0, 0.5), (0.5, 1.0)):
        high, low = float(sampling.percent_to_sigma(start)), float(sampling.percent_to_sigma(end))
        got = s.sample(model, *s.apply(positive, negative, 0, 1.0, start, end), steps=steps)

        def active(sigma, index, high=high, low=low):
            return low <= float(sigma) <= high

        want = s.reference(model, steps, [(0, 1.0)], [(0, 1.0)], active)
        assert_close(got, want, f"percent {start}..{end}", TOL)
        always = s.reference(model, steps, [(0, 1.0)], [(0, 1.0)])
        never = s.reference(model, steps, [], [])
        for other, what in ((always, "on every step"), (never, "off")):
            assert (got - other).abs().max() > 1e-4 * other.abs().max(), f"{start}..{end} equals the run {what}"


def check_chained_add(s: Setup) -> None:
    """Two chained ControlNets (official layout, strength 0.6, then the diffusers adapter, strength 0.9) add."""
    model = s.model()
    positive, negative = s.conds()
    first = s.apply(positive, negative, 0, 0.6)
    both = s.apply(*first, 1, 0.9)
    assert both[0][0][1]["control"].previous_controlnet is first[0][0][1]["control"]
    got = s.sample(model, *both)
    want = s.reference(model, 1, [(0, 0.6), (1, 0.9)], [(0, 0.6), (1, 0.9)])
    assert_close(got, want, "two chained ControlNets", TOL)


def check_cfg_rows(s: Setup) -> None:
    """With CFG, each row gets the control Apply ControlNet attached to it: on the positive only (negative taken from
    before Apply), and the positive's and negative's own when chained differently."""
    model = s.model()
    positive, negative = s.conds()
    controlled, _ = s.apply(positive, negative, 0, 0.8)
    got = s.sample(model, controlled, negative)
    assert_close(got, s.reference(model, 1, [(0, 0.8)], []), "ControlNet on the positive only", TOL)
    _, neg_only = s.apply(positive, negative, 1, 1.2)
    pos_first, _ = s.apply(positive, negative, 0, 0.5)
    got = s.sample(model, pos_first, neg_only)
    assert_close(got, s.reference(model, 1, [(0, 0.5)], [(1, 1.2)]), "different ControlNets per row", TOL)


def check_refusals(s: Setup) -> None:
    """No VAE on Apply ControlNet is refused by ComfyUI; a MODEL that is not ours (ComfyUI's own PixArt) by pre_run,
    naming our DiT loader."""
    positive, negative = s.conds()
    model = s.model()
    no_vae = s.stock.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, s.controlnets[0], s.image, 1.0, 0.0, 1.0
    )
    try:
        s.sample(model, *no_vae)
        raise AssertionError("a PixArt ControlNet ran without a VAE")
    except ValueError as e:
        assert "needs a VAE" in str(e), e
    other = types.SimpleNamespace(diffusion_model=s.torch.nn.Identity(), model_sampling=None)
    try:
        s.controlnets[0].copy().pre_run(other, lambda percent: percent)
        raise AssertionError("a non-PixArt model was accepted")
    except ValueError as e:
        assert "not a PixArt model from PixArt Sigma DiT Loader" in str(e), e


CHECKS = {
    "strength": check_strength,
    "percent_range": check_percent_range,
    "chained_add": check_chained_add,
    "cfg_rows": check_cfg_rows,
    "refusals": check_refusals,
}


def main() -> None:
    comfy_path, work, *names = sys.argv[1:]
    import_comfy(comfy_path)
    import torch

    torch.set_num_threads(2)
    s = Setup(Path(comfy_path), Path(work))
    for name in names:
        CHECKS[name](s)
        print(f"{name}: ok", flush=True)


if __name__ == "__main__":
    main()
