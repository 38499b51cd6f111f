"""The one exception type of the T5 text-encoder loader."""


class T5Error(ValueError):
    """A T5 file, folder or tokenizer that cannot be used, or a T5 that does not fit; the message names the path."""
