"""Training-free step caches for PixArt sampling: T-GATE (attention reuse) and DBCache / first-block cache."""

from .base import CacheStats, StepCache
from .dbcache import FIRST_BLOCK_CACHE, DBCache, DBCacheConfig
from .sampling import GuidedDenoiser
from .tgate import TGate, TGateConfig, negative_rows_only, step_plan

__all__ = [
    "FIRST_BLOCK_CACHE",
    "CacheStats",
    "DBCache",
    "DBCacheConfig",
    "GuidedDenoiser",
    "StepCache",
    "TGate",
    "TGateConfig",
    "negative_rows_only",
    "step_plan",
]
