"""The pack's error family, and the helpers that keep its messages short and printable.

Every reader raises the error of its caller's kind (``CheckpointError`` for the DiT, ``T5Error`` for the text
encoder, ``LoraError`` for LoRAs); all are ``PixArtError``, a ``ValueError``. Messages name the file or setting, what
was expected and what was found; names and keys taken from a file are shortened with :func:`short`, and the whole
message is capped at ``MAX_MESSAGE`` characters.
"""

from __future__ import annotations

MAX_MESSAGE = 1000  # characters of one error message; readers aim for a few hundred
MAX_NAME = 80  # characters of one untrusted name or key inside a message


def _printable(char: str) -> str:
    """``char`` if it prints and encodes in Windows cp1252, else its ``\\x``/``\\u`` escape."""
    if char.isprintable():
        try:
            char.encode("cp1252")
            return char
        except UnicodeEncodeError:
            pass
    return ascii(char)[1:-1]


def short(text: object, limit: int = MAX_NAME) -> str:
    """``text`` as printable cp1252 text of at most about ``limit`` characters (middle elided with ``...``)."""
    text = str(text)
    if len(text) > 4 * limit:
        text = text[: 2 * limit] + text[-2 * limit :]  # bound the escaping work; the middle is elided anyway
    text = "".join(_printable(c) for c in text)
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return text[:half] + "..." + text[-half:]


def clip(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut to ``limit`` characters, saying how much was left out."""
    if len(message) <= limit:
        return message
    tail = f" ... ({len(message) - limit} more characters)"
    return message[: limit - len(tail)] + tail


class PixArtError(ValueError):
    """A file, folder or setting this pack cannot use; the message names it, what was expected and what was found."""

    def __init__(self, message: str) -> None:
        super().__init__(clip(str(message)))


class CheckpointError(PixArtError):
    """A DiT checkpoint file or folder is unreadable, not a PixArt transformer, or does not fit the asked variant."""


class T5Error(PixArtError):
    """A T5 file, folder or tokenizer that cannot be used, or a T5 that does not fit; the message names the path."""


class LoraError(PixArtError):
    """A LoRA file that cannot be read, or whose weights do not fit the model; the message names the file."""


class SettingError(PixArtError):
    """A setting (an argument, a node input) that cannot be used, or does not fit the model; the message names it."""


class SizeError(PixArtError, MemoryError):
    """A size or batch that cannot fit the memory free for it, refused before anything is allocated; the message
    gives the numbers and a way out. Also a ``MemoryError``, for callers that catch those."""


def listing(items, count: int = 5, limit: int = 60) -> str:
    """``['a', 'b']`` of the first ``count`` items, each shortened, and how many more there are."""
    items = list(items)
    shown = repr([short(item, limit) if isinstance(item, str) else item for item in items[:count]])
    return shown + (f" and {len(items) - count} more" if len(items) > count else "")


class ScheduleError(PixArtError):
    """A noise schedule or timestep list that cannot be sampled (non-finite, unordered or repeated noise levels, or
    more steps than the schedule has distinct timesteps); the message names the setting and the limit."""
