"""scorelab: score-based generative modelling, taught by experiment against exact answers.

Public names are re-exported here; submodules hold the rest:
`bounds`, `datasets`, `distributions`, `guidance`, `likelihood`, `losses`, `metrics`, `nets`, `noise`, `paths`, `sampling`, `sde`,
`threads`, `train`, `viz`, `cli` (the `scorelab train` / `scorelab sample` commands, imported on demand), and
`widgets` (imported on demand: it needs ipywidgets).
"""

from . import bounds, datasets, distributions, guidance, likelihood, losses, metrics, nets, noise, paths, sampling, sde, threads, train, viz
from .distributions import GaussianMixture, banana_energy, score_from_energy
from .nets import EMA, ClassifierMLP, EnergyMLP, FourierFeatures, ScoreMLP, UNet, UNetConfig
from .sde import OUSDE, SDE, VESDE, VPSDE, GaussianPath, LinearPath, SubVPSDE
from .train import CheckpointError, TrainConfig, fit, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ClassifierMLP",
    "EMA",
    "EnergyMLP",
    "FourierFeatures",
    "GaussianMixture",
    "GaussianPath",
    "LinearPath",
    "OUSDE",
    "SDE",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "ScoreMLP",
    "TrainConfig",
    "UNet",
    "UNetConfig",
    "banana_energy",
    "bounds",
    "datasets",
    "distributions",
    "fit",
    "guidance",
    "likelihood",
    "load_checkpoint",
    "losses",
    "metrics",
    "nets",
    "noise",
    "paths",
    "sampling",
    "save_checkpoint",
    "sde",
    "score_from_energy",
    "threads",
    "train",
    "viz",
]
