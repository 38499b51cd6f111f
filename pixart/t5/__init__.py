"""T5 text encoder for PixArt-Sigma/alpha captions: checkpoint reading, fp8 storage, tokenizer lookup, prompt encoding.

The public entry point is :func:`pixart.text_encoder.load_t5`; this package holds its parts, one job per module.
"""
