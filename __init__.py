"""comfyui-pixart-sigma: PixArt-Sigma / PixArt-alpha for ComfyUI with a native DiT and KV token compression.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint`` (V3 node API). The nodes are imported only
inside ComfyUI (``comfy`` importable), so ``pixart`` stays a plain PyTorch package that imports anywhere.
"""

try:
    import comfy.utils  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    pass
else:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
