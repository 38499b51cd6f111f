"""comfyui-pixart-sigma: PixArt-Σ / PixArt-α for ComfyUI with a native DiT and KV token compression.

ComfyUI loads this file as the custom-node pack. The nodes are imported only inside ComfyUI (``comfy`` importable),
so ``pixart`` stays a plain PyTorch package that imports anywhere.
"""

import os
import sys

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

try:
    import comfy.utils  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    pass
else:
    # nodes/ imports the model code as the top-level package ``pixart``: make this folder importable, after
    # ComfyUI's own paths so that nothing of ComfyUI (which has a top-level ``nodes`` module) is shadowed.
    _here = os.path.dirname(os.path.abspath(__file__))
    if _here not in sys.path:
        sys.path.append(_here)
    _loaded = sys.modules.get("pixart")
    if _loaded is not None and not os.path.abspath(getattr(_loaded, "__file__", "") or "").startswith(_here):
        raise ImportError(
            f"comfyui-pixart-sigma: another package named 'pixart' is already loaded from {_loaded.__file__}; "
            "remove or rename it (it clashes with this pack's pixart/ folder)"
        )
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
