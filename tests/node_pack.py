"""The node pack without ComfyUI: a small stand-in for ComfyUI's versioned V3 API (``comfy_api.v0_0_2``) and the
pack imported as a package under a test name, as ComfyUI imports it (its ``nodes`` import ``..pixart``).

The stand-in accepts the keyword arguments the real classes take (ComfyUI 0.3.64 and 0.33 alike, for the types the
pack uses) and refuses others, so a misspelt option fails here too; the real API is exercised by the ``comfy`` tests.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK = "pixart_sigma_pack"  # the test name of the pack (ComfyUI uses the folder's path)

_COMMON = {"display_name", "optional", "tooltip", "lazy"}
_WIDGET = _COMMON | {"default", "socketless", "force_input"}
INPUT_OPTIONS = {
    "INT": _WIDGET | {"min", "max", "step", "control_after_generate", "display_mode"},
    "FLOAT": _WIDGET | {"min", "max", "step", "round", "display_mode"},
    "STRING": _WIDGET | {"multiline", "placeholder", "dynamic_prompts"},
    "BOOLEAN": _WIDGET | {"label_on", "label_off"},
    "COMBO": _WIDGET | {"options", "control_after_generate", "upload", "image_folder", "remote"},
}
OUTPUT_OPTIONS = {"display_name", "tooltip", "is_output_list"}


class StubInput:
    io_type = ""

    def __init__(self, id: str, **options):
        unknown = set(options) - INPUT_OPTIONS.get(self.io_type, _COMMON)
        if unknown:
            raise TypeError(f"{self.io_type}.Input({id!r}) got unexpected options {sorted(unknown)}")
        self.id, self.options = id, options


class StubOutput:
    io_type = ""

    def __init__(self, id: str | None = None, **options):
        unknown = set(options) - OUTPUT_OPTIONS
        if unknown:
            raise TypeError(f"{self.io_type}.Output got unexpected options {sorted(unknown)}")
        self.id, self.options = id, options


def _comfy_type(io_type: str) -> type:
    inputs = type("Input", (StubInput,), {"io_type": io_type})
    outputs = type("Output", (StubOutput,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": inputs, "Output": outputs})


@dataclasses.dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = dataclasses.field(default_factory=list)
    outputs: list = dataclasses.field(default_factory=list)
    description: str = ""
    search_aliases: list = dataclasses.field(default_factory=list)

    def __post_init__(self):  # ComfyUI 0.3.64 refuses a node whose ids repeat (0.33 too, within a list)
        ids = [i.id for i in self.inputs] + [o.id for o in self.outputs if o.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError(f"{self.node_id}: ids must be unique between inputs and outputs: {ids}")


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args, ui=None):
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args


class ComfyExtension:
    async def get_node_list(self) -> list:
        raise NotImplementedError


def _make_api() -> dict[str, types.ModuleType]:
    io = types.ModuleType("comfy_api.v0_0_2.io")
    io.Schema, io.ComfyNode, io.NodeOutput = Schema, ComfyNode, NodeOutput
    for name, io_type in {"Int": "INT", "Float": "FLOAT", "String": "STRING", "Boolean": "BOOLEAN",
                          "Combo": "COMBO", "Model": "MODEL", "Conditioning": "CONDITIONING", "Clip": "CLIP",
                          "Latent": "LATENT", "Sampler": "SAMPLER", "Sigmas": "SIGMAS",
                          "ControlNet": "CONTROL_NET"}.items():  # fmt: skip
        setattr(io, name, _comfy_type(io_type))
    io.Custom = _comfy_type
    api = types.ModuleType("comfy_api")
    api.__path__ = []
    version = types.ModuleType("comfy_api.v0_0_2")
    version.io, version.ComfyExtension = io, ComfyExtension
    api.v0_0_2 = version
    return {"comfy_api": api, "comfy_api.v0_0_2": version}


API = _make_api()


def install_comfy_api_stub(monkeypatch) -> None:
    """Put the stand-in ``comfy_api.v0_0_2`` into ``sys.modules`` (undone by ``monkeypatch``). The same module
    objects every time: the pack's nodes keep the classes of the first import."""
    for name, module in API.items():
        monkeypatch.setitem(sys.modules, name, module)


def load_pack(name: str = PACK, folder: Path = REPO) -> types.ModuleType:
    """The pack's ``nodes`` package, with the pack imported as package ``name`` from ``folder`` (as ComfyUI does:
    ``spec_from_file_location`` on its ``__init__.py``). Needs ComfyUI or the stubs in ``sys.modules``."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.nodes")


def v1_inputs(node) -> dict[str, tuple]:
    """{input name: (type or list of choices, options)} of a node's schema, in declared order (the V1 layout,
    which the workflow checks and ComfyUI's /object_info use)."""
    found = {}
    for item in node.define_schema().inputs:
        options = dict(item.options)
        kind = options.pop("options") if item.io_type == "COMBO" else item.io_type
        found[item.id] = (kind, options)
    return found


def v1_outputs(node) -> list[str]:
    return [item.io_type for item in node.define_schema().outputs]
