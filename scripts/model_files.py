"""The model files an API-format workflow names: which loader input names one, and the ``models/`` sub-folder it goes
in. Standard library only (scripts/run_workflow.py reads it before any ComfyUI interpreter is chosen)."""

from __future__ import annotations

from dataclasses import dataclass, field

# class_type -> (input naming the file, sub-folder of models/ it is looked up in)
MODEL_INPUTS = {
    "PixArtSigmaDiTLoader": ("ckpt_name", "diffusion_models"),
    "UNETLoader": ("unet_name", "diffusion_models"),
    "PixArtSigmaT5Loader": ("t5_name", "text_encoders"),
    "CLIPLoader": ("clip_name", "text_encoders"),
    "VAELoader": ("vae_name", "vae"),
    "PixArtSigmaControlNetLoader": ("control_net_name", "controlnet"),
}


@dataclass(frozen=True)
class ModelFile:
    """One model file a workflow loads: the node naming it, the input, the name as written and its sub-folder."""

    node_id: str
    class_type: str
    input_name: str
    name: object  # as found in the workflow: normally a str, but a hostile or broken file can hold anything
    folder: str
    inputs: dict = field(default_factory=dict, compare=False, repr=False)  # all of the node's inputs

    def where(self) -> str:
        """``node 4 PixArtSigmaDiTLoader, ckpt_name``: how messages name the place in the workflow."""
        return f"node {self.node_id} {self.class_type}, {self.input_name}"


def model_files(prompt: dict) -> list[ModelFile]:
    """Every model file the API-format ``prompt`` loads, in node order (inputs that are links are left out: another
    node computes them)."""
    found = []
    for node_id, node in prompt.items():
        kind = node.get("class_type") if isinstance(node, dict) else None
        if kind not in MODEL_INPUTS:
            continue
        input_name, folder = MODEL_INPUTS[kind]
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        value = inputs.get(input_name)
        if not isinstance(value, list):
            found.append(ModelFile(str(node_id), kind, input_name, value, folder, inputs))
    return found
