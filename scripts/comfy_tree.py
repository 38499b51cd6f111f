"""Facts read from a ComfyUI source tree: its version and its requirements."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def comfy_version(comfy: Path) -> str:
    """The checkout's version string from ``comfyui_version.py`` ("unknown" when it has none)."""
    path = Path(comfy) / "comfyui_version.py"
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", path.read_text()) if path.is_file() else None
    return match.group(1) if match else "unknown"


def version_key(version: str) -> tuple[int, ...]:
    """ "0.3.64" -> (0, 3, 64), for sorting versions."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


def requirement_lines(comfy: Path, essential_only: bool = False, name: str = "requirements.txt") -> list[str]:
    """The requirement lines of the checkout's ``requirements.txt`` (or another file ``name`` in it; comments and pip
    options such as ``-r`` dropped); with ``essential_only``, only those above its "non essential" comment."""
    path = Path(comfy) / name
    lines = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.strip()
        if essential_only and line.startswith("#") and re.search(r"non[ -]?essential", line, re.IGNORECASE):
            break
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def requirement_name(line: str) -> str:
    """The normalised distribution name of a requirement line ("SQLAlchemy>=2.0" -> "sqlalchemy")."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return re.sub(r"[-_.]+", "-", match.group(0) if match else line).lower()


def essential_requirements(comfy: Path) -> list[str]:
    """Distribution names the checkout needs to start: its requirements above the "non essential" comment."""
    return [requirement_name(line) for line in requirement_lines(comfy, essential_only=True)]


def frontend_pins(comfy: Path) -> list[str]:
    """The checkout's ``comfyui-*`` lines (frontend, templates, docs: pinned per release)."""
    return [line for line in requirement_lines(comfy) if requirement_name(line).startswith("comfyui-")]
