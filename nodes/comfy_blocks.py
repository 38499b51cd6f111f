"""ComfyUI's per-block machinery on our DiT, as one ``pixart`` block hook: Cancel between blocks, the
``block_index`` / ``total_blocks`` bookkeeping of ComfyUI's DiTs and ``patches_replace["dit"][("double_block", i)]``
block replacements (SkipLayerGuidanceDiT and other stock nodes).

The contract of a block replacement is the one of ComfyUI's single-stream DiTs (Wan, Qwen-Image):
``patch(args, {"original_block": fn}) -> {"img": ...}`` with args ``{"img": (B, N, C) image tokens, "txt": (B, L', C)
projected caption tokens, "vec": (B, 6C) adaLN-single output, "transformer_options": dict}``; ``fn(args)`` runs the
block on ``args`` and returns ``{"img": ...}``. Imports ComfyUI.
"""

from __future__ import annotations

import comfy.model_management as mm
from torch import Tensor, nn

from ..pixart.block_hooks import BlockFn, BlockHook, BlockInputs

BLOCK_KEY = "double_block"  # PixArt blocks are single-stream; ComfyUI's single-stream DiTs patch this key


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
