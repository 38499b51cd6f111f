"""The error every checkpoint reader raises for a file it cannot use."""


class CheckpointError(ValueError):
    """A checkpoint file or folder is unreadable, not a PixArt transformer, or does not fit the requested variant."""
