"""The pieces of ComfyUI's V3 node API the nodes share: the versioned ``io`` module, the T5 socket type, a Schema
that uses host-only features where the host has them, and input checks for ``validate_inputs``.

``comfy_api.v0_0_2`` is the versioned API that ComfyUI 0.3.64 and 0.33 both ship, so the nodes work on either.
"""

from __future__ import annotations

import dataclasses
import math

from comfy_api.v0_0_2 import ComfyExtension, io

from .common import CATEGORY

T5Encoder = io.Custom("PIXART_T5")  # the T5 encoder passed from PixArtSigmaT5Loader to PixArtSigmaTextEncode


def _schema_fields() -> set[str]:
    if dataclasses.is_dataclass(io.Schema):
        return {field.name for field in dataclasses.fields(io.Schema)}
    return set()


SCHEMA_FIELDS = _schema_fields()


def schema(*, search_aliases: list[str] | None = None, **fields) -> io.Schema:
    """``io.Schema(**fields)``, plus ``search_aliases`` when this ComfyUI's Schema has that field (0.33 does,
    0.3.64 does not)."""
    if search_aliases and "search_aliases" in SCHEMA_FIELDS:
        fields["search_aliases"] = search_aliases
    return io.Schema(**fields)


def number_problem(name: str, value, low: float, high: float) -> str | None:
    """Why ``value`` is not a usable number for input ``name`` (not finite, outside low..high), else None.

    For inputs a node's ``validate_inputs`` declares: ComfyUI then skips its own range check of them, and its check
    lets NaN through anyway (every comparison with NaN is False)."""
    if value is None:  # linked from another node: known only when the node runs
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    if not low <= value <= high:
        return f"{name} must be between {low} and {high}, got {value}"
    return None


def choice_problem(name: str, value, choices) -> str | None:
    """Why ``value`` is not one of ``choices`` for input ``name``, else None (None values are links)."""
    if value is None or value in choices:
        return None
    return f"{name}: {value!r} is not one of {list(choices)[:12]}"


def check_number(who: str, name: str, value, low: float, high: float) -> None:
    """ValueError naming node and input unless ``value`` is finite and within low..high (at run time)."""
    problem = number_problem(name, value, low, high)
    if problem is not None:
        raise ValueError(f"{who}: {problem}")


__all__ = [
    "CATEGORY",
    "ComfyExtension",
    "T5Encoder",
    "check_number",
    "choice_problem",
    "io",
    "number_problem",
    "schema",
]
