"""What ComfyUI tells the frontend about a node (its /object_info entry), read in the session's ComfyUI, in the V1
layout the workflow files and the checks below use."""

from __future__ import annotations


def object_info(name: str) -> dict:
    """The /object_info entry of a registered node: what ComfyUI's server builds (V3 nodes describe themselves)."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    cls = comfy_nodes.NODE_CLASS_MAPPINGS[name]
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "output_tooltips": list(getattr(cls, "OUTPUT_TOOLTIPS", [])),
        "display_name": comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
        "category": getattr(cls, "CATEGORY", "sd"),
        "description": getattr(cls, "DESCRIPTION", ""),
    }


def v1_inputs(name: str) -> dict[str, tuple]:
    """{input name: (type or list of choices, options)} of a node's required and optional inputs in declared order
    (a V3 combo, ("COMBO", {"options": [...]}), as its list of choices)."""
    info = object_info(name)
    found = {}
    for group in ("required", "optional"):
        specs = info["input"].get(group, {})
        for input_name in info.get("input_order", {}).get(group, list(specs)):
            kind, options = specs[input_name][0], dict(specs[input_name][1]) if len(specs[input_name]) > 1 else {}
            if kind == "COMBO":
                kind = options.pop("options")
            found[input_name] = (kind, options)
    return found


def v1_outputs(name: str) -> list[str]:
    """The output types of a node."""
    return list(object_info(name)["output"])
