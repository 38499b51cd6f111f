"""Every tracked text file of the pack encodes in Windows cp1252 (the console and file encoding many Windows users
have): source, configuration, workflows and docs' code alike. Written as ``Sigma``, ``alpha``, ``<=``, ``->``, ``x``
instead of Greek letters, arrows, comparison signs, the multiplication sign or the ellipsis character.

README.md and LICENSE are exempt: they are read in a browser or an editor, never printed by the pack."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXEMPT = {"README.md", "LICENSE"}
BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".safetensors", ".pt", ".pth", ".bin", ".ico"}


def tracked_files() -> list[Path]:
    """The files git tracks here; without git (a source archive), every file outside hidden folders."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if listed.returncode == 0 and listed.stdout:
        names = [name for name in listed.stdout.decode().split("\0") if name]
    else:
        names = [p.relative_to(REPO).as_posix() for p in REPO.rglob("*") if p.is_file()]
        names = [n for n in names if not any(part.startswith(".") for part in Path(n).parts[:-1])]
    return [REPO / n for n in sorted(names) if n not in EXEMPT and Path(n).suffix.lower() not in BINARY_SUFFIXES]


def not_cp1252(path: Path) -> list[str]:
    """'line N: <char> U+XXXX' for each character of the file that cp1252 cannot encode."""
    text = path.read_bytes().decode("utf-8")
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for char in dict.fromkeys(line):
            try:
                char.encode("cp1252")
            except UnicodeEncodeError:
                found.append(f"line {number}: {char!r} U+{ord(char):04X}")
    return found


def test_the_check_finds_what_cp1252_cannot_encode(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""PixArt-Sigma, alpha <= 1 -> ok"""\nx = "\u03a3 \u2264 \u2192"\n', encoding="utf-8")
    assert not_cp1252(sample) == ["line 2: '\u03a3' U+03A3", "line 2: '\u2264' U+2264", "line 2: '\u2192' U+2192"]


@pytest.mark.parametrize("path", tracked_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_tracked_file_encodes_in_cp1252(path):
    if not path.is_file():
        pytest.skip(f"{path.name} is tracked but deleted in this working tree")
    problems = not_cp1252(path)
    assert not problems, f"{path.relative_to(REPO)}: not encodable in cp1252:\n" + "\n".join(problems[:20])
