"""The one exception type of the LoRA loader."""


class LoraError(ValueError):
    """A LoRA file that cannot be read, or whose weights do not fit the model; the message names the file."""
