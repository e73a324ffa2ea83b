"""scorelab: score-based generative modelling, taught by experiment against exact answers.

Public names are re-exported here; submodules hold the rest:
`datasets`, `distributions`, `losses`, `metrics`, `nets`, `noise`, `sampling`, `train`, `viz`, and
`widgets` (imported on demand: it needs ipywidgets).
"""

from . import datasets, distributions, losses, metrics, nets, noise, sampling, train, viz
from .distributions import GaussianMixture, banana_energy, score_from_energy
from .nets import EMA, EnergyMLP, FourierFeatures, ScoreMLP
from .train import CheckpointError, TrainConfig, fit, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "EMA",
    "EnergyMLP",
    "FourierFeatures",
    "GaussianMixture",
    "ScoreMLP",
    "TrainConfig",
    "banana_energy",
    "datasets",
    "distributions",
    "fit",
    "load_checkpoint",
    "losses",
    "metrics",
    "nets",
    "noise",
    "sampling",
    "save_checkpoint",
    "score_from_energy",
    "train",
    "viz",
]
