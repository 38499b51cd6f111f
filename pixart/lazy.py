"""A value made on first use, as the block forward needs for its whole-sequence pieces."""

from __future__ import annotations

from collections.abc import Callable


class Lazy:
    """A value made on first use and kept until ``clear()``. Plain attributes rather than ``functools.cache``:
    torch.compile re-runs a cached closure on every call, which gave a fresh, unfilled output tensor."""

    def __init__(self, make: Callable[[], object]):
        self.make, self.value = make, None

    def __call__(self):
        if self.value is None:
            self.value = self.make()
        return self.value

    def clear(self) -> None:
        self.value = None
