"""Load folders as custom-node packs the way ComfyUI does (``nodes.load_custom_node``) and report, as one JSON line,
which model code each pack's nodes use and what the global names ``pixart``, ``scripts``, ``tests`` resolve to.

Run with ComfyUI's interpreter, isolated (``python -I``) from a scratch working directory:
    python -I tests/comfy/two_copies.py COMFYUI_PATH PACK_FOLDER [PACK_FOLDER ...]
Started by tests/comfy/test_pack_package.py; nothing is written anywhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys


def main(comfy_path: str, folders: list[str]) -> dict:
    sys.path.insert(0, comfy_path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import nodes  # ComfyUI's nodes.py

    report = {"packs": {}, "globals": {}}
    for folder in folders:
        loaded = asyncio.run(nodes.load_custom_node(folder))
        package = folder.replace(".", "_x_")  # ComfyUI's module name for a pack folder
        sampler = sys.modules.get(f"{package}.nodes.sampler")
        pixart = sys.modules.get(f"{package}.pixart")
        report["packs"][folder] = {
            "loaded": loaded,
            "pixart_file": getattr(pixart, "__file__", None),
            "marker": getattr(pixart, "COPY_MARKER", None),
            "sampler_config_module": sampler.PixArtConfig.__module__ if sampler else None,
            "sampler_config_file": sys.modules[sampler.PixArtConfig.__module__].__file__ if sampler else None,
        }
    for name in ("pixart", "scripts", "tests"):
        spec = importlib.util.find_spec(name)
        origin = None if spec is None else (spec.origin or list(spec.submodule_search_locations or []))
        report["globals"][name] = {"in_sys_modules": name in sys.modules, "found": origin}
    node_classes = {name: cls.__module__ for name, cls in nodes.NODE_CLASS_MAPPINGS.items() if "PixArtSigma" in name}
    report["node_modules"] = node_classes
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:])))
