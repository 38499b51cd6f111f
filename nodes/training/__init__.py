"""The training nodes: PixArt Sigma Training Dataset -> PixArt Sigma Train -> PixArt Sigma Save Trained."""

from __future__ import annotations

from .dataset import PixArtSigmaTrainingDataset
from .save import PixArtSigmaSaveTrained
from .train import PixArtSigmaTrain

TRAINING_NODES = [PixArtSigmaTrainingDataset, PixArtSigmaTrain, PixArtSigmaSaveTrained]

__all__ = ["TRAINING_NODES", "PixArtSigmaSaveTrained", "PixArtSigmaTrain", "PixArtSigmaTrainingDataset"]
