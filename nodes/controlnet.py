"""PixArt Sigma ControlNet Loader: a PixArt ControlNet-Transformer (PixArt-delta) as a standard ComfyUI CONTROL_NET,
for the stock Apply ControlNet node."""

from __future__ import annotations

from .common import find_model, model_choices
from .node_api import CATEGORY, io, schema

CONTROLNET_KINDS = ("controlnet",)


class PixArtSigmaControlNetLoader(io.ComfyNode):
    """Loads a PixArt ControlNet as a CONTROL_NET for Apply ControlNet."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="PixArtSigmaControlNetLoader",
            display_name="PixArt Sigma ControlNet Loader",
            category=CATEGORY,
            search_aliases=["pixart controlnet", "controlnet", "pixart-delta", "control net"],
            description=(
                "PixArt Sigma ControlNet Loader: loads a PixArt ControlNet-Transformer (PixArt-delta: copies of the "
                "first 13 blocks) from models/controlnet: the official PixArt-ControlNet .pth or safetensors, or the "
                "diffusers research-project adapter (controlnet_blocks.*). Connect it to the stock Apply ControlNet "
                "with the control image and the VAE (the hint is encoded to a latent); strength, start and end "
                "percent and chaining work as for ComfyUI's own ControlNets. Needs a MODEL from PixArt Sigma DiT "
                "Loader."
            ),
            inputs=[
                io.Combo.Input(
                    "control_net_name",
                    options=model_choices(CONTROLNET_KINDS),
                    tooltip="PixArt ControlNet file (or diffusers adapter folder, name/) in models/controlnet, e.g. "
                    "PixArt-XL-2-1024-ControlNet.pth.",
                ),
            ],
            outputs=[
                io.ControlNet.Output(
                    tooltip="The ControlNet, for Apply ControlNet (connect its VAE input: PixArt ControlNets work on "
                    "latents)."
                )
            ],
        )

    @classmethod
    def execute(cls, control_net_name) -> io.NodeOutput:
        from .comfy_controlnet import load_control_net

        return io.NodeOutput(load_control_net(find_model(CONTROLNET_KINDS, control_net_name)))
