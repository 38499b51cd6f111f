"""ComfyUI's per-block machinery on our DiT, as one ``pixart`` block hook: Cancel between blocks, the
``block_index`` / ``total_blocks`` bookkeeping of ComfyUI's DiTs and ``patches_replace["dit"][("double_block", i)]``
block replacements (SkipLayerGuidanceDiT and other stock nodes).

The contract of a block replacement is the one of ComfyUI's single-stream DiTs (Wan, Qwen-Image):
``patch(args, {"original_block": fn}) -> {"img": ...}`` with args ``{"img": (B, N, C) image tokens, "txt": (B, L', C)
projected caption tokens, "vec": (B, 6C) adaLN-single output, "transformer_options": dict}``; ``fn(args)`` runs the
block on ``args`` and returns ``{"img": ...}``.

``control_block_hook`` adds the ControlNet residuals ComfyUI hands a model call (``control["output"][i]`` to the input
of block i + 1, as ComfyUI's SD3 ControlNets do).
"""

from __future__ import annotations

import comfy.model_management as mm
from torch import Tensor, nn

from ...pixart.block_hooks import BlockFn, BlockHook, BlockInputs
from ...pixart.controlnet import add_to_block_inputs

BLOCK_KEY = "double_block"  # PixArt blocks are single-stream; ComfyUI's single-stream DiTs patch this key
CONTROL_KEY = "output"  # control["output"][i]: a ControlNet residual for the input of block i + 1


def comfy_block_hook(blocks: nn.ModuleList, transformer_options: dict) -> BlockHook:
    """The hook to pass innermost (last) in ``block_hooks``: a replacement's ``original_block`` runs the block on
    the ``img``, ``txt`` and ``vec`` it is given. Sets ``total_blocks`` and ``block_type`` in
    ``transformer_options`` now and ``block_index`` before each block, and raises ComfyUI's interrupt exception
    before a block when the user pressed Cancel."""
    replace = transformer_options.get("patches_replace", {}).get("dit", {})
    transformer_options["total_blocks"] = len(blocks)
    transformer_options["block_type"] = "double"

    def hook(index: int, x: Tensor, inputs: BlockInputs, run: BlockFn) -> Tensor:
        mm.throw_exception_if_processing_interrupted()
        transformer_options["block_index"] = index
        patch = replace.get((BLOCK_KEY, index))
        if patch is None:
            return run(x)

        def original_block(args: dict) -> dict:
            return {"img": run(args["img"], inputs._replace(y=args["txt"], t0=args["vec"]))}

        args = {"img": x, "txt": inputs.y, "vec": inputs.t0, "transformer_options": transformer_options}
        return patch(args, {"original_block": original_block})["img"]

    return hook


def control_block_hook(control: dict | None) -> BlockHook | None:
    """The block hook adding ComfyUI's ``control`` (a model call's merged ControlNet outputs) to the inputs of the
    PixArt blocks, or None when there is none. Controls other than PixArt ControlNets' (UNet-style ``input`` /
    ``middle`` entries) are refused."""
    if not control:
        return None
    foreign = [key for key, values in control.items() if key != CONTROL_KEY and any(v is not None for v in values)]
    if foreign:
        raise ValueError(
            f"PixArt Sigma: the conditioning carries a ControlNet output ({', '.join(foreign)}) that is not a PixArt "
            "ControlNet's; load PixArt ControlNets with PixArt Sigma ControlNet Loader"
        )
    residuals = {i + 1: r for i, r in enumerate(control.get(CONTROL_KEY, [])) if r is not None}
    return add_to_block_inputs(residuals) if residuals else None
