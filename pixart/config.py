"""Hyperparameters of the PixArt-Sigma / PixArt-alpha transformer, the released variants, KV compression settings."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .errors import SettingError

FAMILIES = ("sigma", "alpha")
KV_MODES = ("conv", "ave", "uniform", "avgpool")
KV_REMAINDERS = ("keep", "drop")
KV_LAYER_WORDS = ("auto", "all")  # KVCompress.layers: the second half of the blocks, or every block
# Weight and compute dtypes of the DiT and the T5 (float8 is only a storage format of T5 weights: pixart.t5.fp8).
COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# T5 tokens per caption each family was trained with (PixArt-Sigma §3.1: 300; PixArt-alpha: 120).
CAPTION_TOKENS = {"sigma": 300, "alpha": 120}


@dataclass(frozen=True)
class PixArtConfig:
    """Architecture of one PixArt model (PixArt-alpha §2.3, PixArt-Sigma §3)."""

    depth: int = 28  # transformer blocks
    hidden_size: int = 1152  # C, width of the token stream
    num_heads: int = 16  # h, attention heads; every released model uses d = C / h = 72
    patch_size: int = 2  # p, latent pixels per token side
    in_channels: int = 4  # C_in, VAE latent channels
    out_channels: int = 8  # epsilon (4) + learned variance (4)
    caption_channels: int = 4096  # T5-v1.1-XXL width
    caption_tokens: int = CAPTION_TOKENS["sigma"]  # L, T5 tokens the model was trained with (CAPTION_TOKENS)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * C
    sample_size: int = 128  # latent side of the base resolution (128 latent = 1024 px)
    pe_interpolation: float = 2.0  # position-embedding scale: positions span [0, sample_size / p / pe_interpolation)
    micro_conditions: bool = False  # resolution and aspect-ratio embedders (PixArt-alpha 1024-MS)
    family: str = "sigma"  # "sigma" (SDXL VAE) or "alpha" (SD1.5 VAE)
    conv_kv_layers: tuple[int, ...] = ()  # blocks that carry trained KV-compression conv weights
    conv_kv_factor: int = 1  # kernel = stride of those convolutions; 1 when there are none

    def __post_init__(self) -> None:
        positive = ("depth", "hidden_size", "num_heads", "patch_size", "in_channels", "out_channels")
        for name in positive + ("caption_channels", "caption_tokens", "sample_size", "conv_kv_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"PixArtConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"PixArtConfig: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.micro_conditions and self.hidden_size % 3:
            raise ValueError(f"PixArtConfig: micro-conditions need hidden_size divisible by 3, got {self.hidden_size}")
        if self.family not in FAMILIES:
            raise ValueError(f"PixArtConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if self.pe_interpolation <= 0 or self.mlp_ratio <= 0:
            raise ValueError("PixArtConfig: pe_interpolation and mlp_ratio must be positive")
        if self.sample_size % self.patch_size:
            raise ValueError(
                f"PixArtConfig: sample_size {self.sample_size} is not divisible by patch_size {self.patch_size}"
            )
        bad = [i for i in self.conv_kv_layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"PixArtConfig.conv_kv_layers {bad} are outside 0..{self.depth - 1}")
        if self.conv_kv_layers and self.conv_kv_factor < 2:
            raise ValueError("PixArtConfig: conv_kv_layers need conv_kv_factor >= 2")

    @property
    def head_dim(self) -> int:
        """d = C / h."""
        return self.hidden_size // self.num_heads

    @property
    def base_grid(self) -> int:
        """Token grid side at the base resolution (64 for 1024 px)."""
        return self.sample_size // self.patch_size

    @property
    def resolution(self) -> int:
        """Base image side in pixels (VAE factor 8)."""
        return self.sample_size * 8

    def replace(self, **changes) -> PixArtConfig:
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown PixArtConfig fields {unknown}; known: {sorted(self.__dataclass_fields__)}")
        return replace(self, **changes)


def _sigma(sample_size: int, pe_interpolation: float) -> PixArtConfig:
    return PixArtConfig(sample_size=sample_size, pe_interpolation=pe_interpolation)


def _alpha(sample_size: int, pe_interpolation: float, micro_conditions: bool) -> PixArtConfig:
    return PixArtConfig(
        sample_size=sample_size,
        pe_interpolation=pe_interpolation,
        caption_tokens=CAPTION_TOKENS["alpha"],
        micro_conditions=micro_conditions,
        family="alpha",
    )


# Released checkpoints. Sigma: PixArt-Sigma-XL-2-{256x256,512-MS,1024-MS,2K-MS};
# alpha: PixArt-XL-2-{256x256,512x512,1024-MS}.
VARIANTS: dict[str, PixArtConfig] = {
    "sigma-256": _sigma(32, 0.5),
    "sigma-512": _sigma(64, 1.0),
    "sigma-1024": _sigma(128, 2.0),
    "sigma-2k": _sigma(256, 4.0),
    "alpha-256": _alpha(32, 0.5, micro_conditions=False),
    "alpha-512": _alpha(64, 1.0, micro_conditions=False),
    "alpha-1024": _alpha(128, 2.0, micro_conditions=True),
}


@dataclass(frozen=True)
class KVCompress:
    """Key/value token compression in self-attention (PixArt-Sigma §3.2).

    Keys and values of the chosen blocks are downsampled on the 2-D token grid by ``factor`` per side, so
    attention costs N*N/factor^2 instead of N*N. Queries keep full resolution, so the output grid is unchanged.

    mode:
        ``conv``    depthwise stride-``factor`` convolution + LayerNorm; weights come from a KV-compressed checkpoint.
        ``ave``     nearest-neighbour resize, as the official code's ``ave`` (equal to ``uniform`` for whole grids).
        ``uniform`` every ``factor``-th token in each direction.
        ``avgpool`` the mean of each ``factor``x``factor`` window (training-free).
    remainder: what happens to the last rows/columns when a grid side is not divisible by ``factor``:
        ``keep``  they form smaller edge windows (``uniform`` picks their first token, ``avgpool`` averages what
                  is there, ``conv``/``ave`` see the edge token repeated), so every token is represented;
        ``drop``  they are not keys/values (the official behaviour of ``conv`` and ``ave``).
    layers: ``"auto"`` the second half of the blocks (14-27 of 28, the official configuration; None means the
        same), ``"all"`` every block, or block indices. Checked against the model's depth when a model takes the
        setting (``layer_set``); ``from_text`` reads the text form ("auto", "all", "14-27", "0,2,4-6").
    """

    mode: str = "avgpool"
    factor: int = 2
    layers: str | tuple[int, ...] | None = "auto"
    remainder: str = "keep"

    def __post_init__(self) -> None:
        if self.mode not in KV_MODES:
            raise SettingError(f"KVCompress.mode must be one of {KV_MODES}, got {self.mode!r}")
        if not isinstance(self.factor, int) or not 2 <= self.factor <= 8:
            raise SettingError(f"KVCompress.factor must be an integer in 2..8, got {self.factor!r}")
        if self.remainder not in KV_REMAINDERS:
            raise SettingError(f"KVCompress.remainder must be one of {KV_REMAINDERS}, got {self.remainder!r}")
        layers = "auto" if self.layers is None else self.layers
        if isinstance(layers, str):
            if layers not in KV_LAYER_WORDS:
                raise SettingError(
                    f"KVCompress.layers must be one of {KV_LAYER_WORDS} or block indices, got {layers!r} "
                    "(KVCompress.from_text reads lists such as '14-27')"
                )
        else:
            layers = tuple(sorted({int(i) for i in layers}))
        object.__setattr__(self, "layers", layers)

    @classmethod
    def from_text(cls, mode: str, factor: int, layers: str, remainder: str = "keep") -> KVCompress:
        """The setting with its layers given as text: "auto", "all" or a list such as "14-27" or "0,2,4-6"
        (syntax checked here, the range when a model takes it)."""
        return cls(mode, factor, parse_layers(layers), remainder)

    def layer_set(self, depth: int) -> frozenset[int]:
        """The compressed block indices for a model of ``depth`` blocks; raises on indices out of range."""
        if self.layers == "auto":
            return frozenset(range(depth // 2, depth))
        if self.layers == "all":
            return frozenset(range(depth))
        bad = [i for i in self.layers if not 0 <= i < depth]
        if bad:
            raise SettingError(f"KVCompress.layers {bad} are outside 0..{depth - 1} for a {depth}-block model")
        return frozenset(self.layers)


def parse_layers(text: str) -> str | tuple[int, ...]:
    """A block list as text -> ``"auto"`` (also for ""), ``"all"`` or sorted indices: "14-27" or "0,2,4-6" (the
    syntax only; ``KVCompress.layer_set`` checks the range against a model)."""
    text = text.strip().lower()
    if text in ("", "auto", "all"):
        return text or "auto"
    layers: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, sep, last = part.partition("-")
        try:
            lo, hi = int(first), int(last if sep else first)
        except ValueError as e:
            raise SettingError(f"KV layers {text!r}: {part!r} is not a number or a range like 14-27") from e
        if lo > hi or lo < 0:
            raise SettingError(f"KV layers {text!r}: {part!r} is outside every block range (first <= last, from 0)")
        layers.update(range(lo, hi + 1))
    if not layers:
        raise SettingError(f"KV layers {text!r}: expected a list such as '14-27', 'all' or '0,2,4-6'")
    return tuple(sorted(layers))
