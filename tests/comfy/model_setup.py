"""A 2-block tiny PixArt-Sigma file (WIDTH wide), our MODEL of it as ComfyUI gets it, prompt states, noise, sampling
through ComfyUI, and the same file through ``pixart`` directly: the set-up of the in-process machinery and LoRA
tests."""

from __future__ import annotations

STEPS = 4
CFG = 4.5
WIDTH = 144  # C: 2 heads of 72 (our loader reads any multiple of 72 wide; 1152 only matters to ComfyUI's own PixArt)


class Setup:
    """A 2-block tiny PixArt-Sigma file (WIDTH wide), our MODEL of it, conditioning and noise."""

    def __init__(self, comfyui, work):
        import torch
        from safetensors.torch import save_file

        from scripts import tiny_weights

        self.torch = torch
        self.comfyui = comfyui
        self.comfy_model = comfyui.module("nodes.dit.model")
        self.path = work / "tiny_sigma.safetensors"
        save_file(tiny_weights.dit_state_dict("sigma-1024", depth=2, seed=3, hidden=WIDTH), str(self.path))
        g = torch.Generator().manual_seed(11)
        self.pos = torch.randn(1, 9, 4096, generator=g)
        self.neg = torch.randn(1, 4, 4096, generator=g)
        self.noise = torch.randn(1, 4, 32, 32, generator=g)

    def model(self, kv=None):
        return self.comfy_model.load_model(self.path, "auto", self.torch.float32, kv)

    def conds(self):
        ones = self.torch.ones
        return [[self.pos, {"attention_mask": ones(1, 9)}]], [[self.neg, {"attention_mask": ones(1, 4)}]]

    def sample(self, model, steps=STEPS, sampler="euler", scheduler="normal", cfg=CFG):
        import comfy.sample

        positive, negative = self.conds()
        latent = self.torch.zeros_like(self.noise)
        return comfy.sample.sample(
            model, self.noise, steps, cfg, sampler, scheduler, positive, negative, latent, seed=0, disable_pbar=True
        )

    def reference(self, kv=None, token_chunk=None):
        """Our ``pixart`` model of the same file, outside ComfyUI."""
        import pixart

        return pixart.load_dit(self.path, "auto", self.torch.float32, kv, token_chunk=token_chunk)
