"""`scorelab train` and `scorelab sample`: score-based image models from the command line, on a CPU, a GPU or many.

    scorelab train --config shapes-vp --steps 200                       # a laptop, a minute
    scorelab train --config mnist-vp --data ~/data/mnist --out runs/mnist
    scorelab train --out runs/mnist --resume --steps 200000              # continue it, its stored settings
    scorelab train --config runs/mnist/config.json --data ~/data/mnist --out runs/mnist-2   # a saved run's settings
    torchrun --nproc_per_node=4 -m scorelab train --config cifar10-vp --data ~/data/cifar10
    scorelab sample --ckpt runs/mnist/checkpoint.pt --sampler pc --n 64 --out grid.png
    scorelab sample --ckpt runs/mnist/checkpoint.pt --n 10000 --npz samples.npz --out grid.png   # in batches
    scorelab sample --ckpt runs/mnist/checkpoint.pt --inpaint --data ~/data/mnist --n 8 --out inpainted.png
    scorelab classifier --config mnist --data ~/data/mnist --out runs/mnist-classifier   # for classifier-FID
    scorelab train --config mnist-vp --data ~/data/mnist classifier=runs/mnist-classifier/classifier.pt fid_every=1000

Every option of a run is a field of `RunConfig` (typed, one comment each). `--config NAME` starts from a preset
of `CONFIGS` (or a run's saved `config.json`); `key=value` arguments override fields: a `RunConfig` field (`sde=ve`, `unet=tiny`), a
`TrainConfig` field (`lr=2e-4`, `precision=fp32`), or a U-Net field (`unet.base_channels=32`). Tuples are
comma-separated (`shape_weights=0.25,0.25,0.25,0.25`). The same code as the lessons does the work:
`losses.sde_dsm`, `train.fit`, `sampling.pc_sample` / `ode_sample`, `nets.UNet`. Introduced in lesson 09.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import datasets, losses, metrics, sampling
from ._checks import append_dims, check_choice, check_int, check_nonnegative, check_positive
from .guidance import autoguided_score
from .nets import EMA, UNET_PRESETS, ImageClassifier, UNet, UNetConfig
from .noise import sigma_max_from_data
from .sde import VESDE, VPSDE, SubVPSDE, condition_on_std
from .train import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    TrainConfig,
    _load_module_state,
    fit,
    init_distributed,
    load_checkpoint,
    progress_options,
    resolve_device,
    save_checkpoint,
)
from .viz import save_image_grid

#: the SDEs a run can use, built from a `RunConfig`
SDES = {
    "vp": lambda c: VPSDE(c.beta_min, c.beta_max),
    "subvp": lambda c: SubVPSDE(c.beta_min, c.beta_max),
    "ve": lambda c: VESDE(c.sigma_min, c.sigma_max),
}
DATASETS = ("shapes", *datasets.IMAGE_DATASETS)


@dataclass
class RunConfig:
    dataset: str = "shapes"  # "shapes" (procedural, no files), "mnist", "fashion_mnist" or "cifar10" (files in --data)
    split: str = "train"  # split of a file dataset to train on ("test" for the 10 000 MNIST test digits)
    holdout: int = 1000  # the last images of the split are never trained on (0: train on all): `sample --inpaint` fills them in
    image_size: int = 16  # shapes only: side in pixels
    shape_weights: tuple[float, ...] = (0.4, 0.4, 0.1, 0.1)  # shapes only: class balance over datasets.SHAPES
    n_images: int = 20_000  # shapes only: training images drawn (plus the holdout)
    random_flip: bool = False  # mirror each training image left-right with probability 1/2 (CIFAR-10, as score_sde)
    sde: str = "vp"  # "vp", "subvp" or "ve"
    beta_min: float = 0.1  # VP and sub-VP: beta(t) from beta_min to beta_max
    beta_max: float = 20.0
    sigma_min: float = 0.01  # VE: sigma(t) from sigma_min ...
    sigma_max: float = 50.0  # ... to sigma_max, about the largest distance between two training images
    eps: float = 1e-5  # smallest training time of sde_dsm
    weighting: str = "sigma2"  # sde_dsm's lambda(t): "sigma2" (DDPM's noise loss), "min_snr" (Hang et al. 2023) or "likelihood"
    snr_gamma: float = 5.0  # "min_snr" only: times with SNR above this are weighted down to it
    unet: UNetConfig = UNET_PRESETS["tiny"]  # the architecture (a preset name on the command line); channels follow the data
    train: TrainConfig = field(default_factory=lambda: TrainConfig(device="auto"))  # steps, batch, optimiser, checkpoints, device
    ema_decay: float = 0.999  # samples come from this exponential moving average of the weights
    sample_every: int = 1000  # steps between grids of samples written during training (0: only at the end)
    n_samples: int = 64  # images per grid
    sample_steps: int = 500  # predictor-corrector steps for those grids
    classifier: str | None = None  # checkpoint of `scorelab classifier`: log classifier-FID of EMA samples to log.jsonl
    fid_every: int = 0  # steps between classifier-FID measurements (0: every sample_every steps); checked at log_every steps
    fid_samples: int = 500  # EMA samples per measurement, compared with the holdout images
    guide_step: int = 0  # also keep the EMA weights at this step in guide.pt, the worse model `sample --guide` uses (0: none)

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("sde", self.sde, SDES)
        VESDE(self.sigma_min, self.sigma_max), VPSDE(self.beta_min, self.beta_max)  # every schedule's own checks
        check_choice("split", self.split, datasets.IDX_FILES)
        check_int("holdout", self.holdout, minimum=0)
        check_int("image_size", self.image_size, minimum=8)
        if len(self.shape_weights) != len(datasets.SHAPES) or not all(w >= 0 for w in self.shape_weights) or not any(self.shape_weights):
            raise ValueError(f"shape_weights must be {len(datasets.SHAPES)} weights >= 0 for {datasets.SHAPES}, got {self.shape_weights}")
        check_int("n_images", self.n_images, minimum=1)
        check_positive("eps", self.eps, allow_tensor=False)
        check_choice("weighting", self.weighting, losses.SDE_WEIGHTINGS)
        check_positive("snr_gamma", self.snr_gamma, allow_tensor=False)
        check_positive("ema_decay", self.ema_decay, allow_tensor=False)
        check_int("sample_every", self.sample_every, minimum=0)
        check_int("n_samples", self.n_samples, minimum=1)
        check_int("sample_steps", self.sample_steps, minimum=1)
        check_int("fid_every", self.fid_every, minimum=0)
        check_int("fid_samples", self.fid_samples, minimum=2)
        check_int("guide_step", self.guide_step, minimum=0)
        if self.classifier is not None and self.holdout < 2:
            raise ValueError(f"classifier-FID compares samples with the holdout images: holdout must be >= 2, got {self.holdout}")


def _shapes_config(sde: str, **changes) -> RunConfig:
    train = TrainConfig(n_steps=2000, batch_size=64, lr=2e-3, warmup_steps=100, checkpoint_every=250, log_every=10, device="auto")
    return RunConfig(sde=sde, sigma_max=25.0, train=train, ema_decay=0.99, sample_every=500, sample_steps=200, **changes)


def _gpu_train(n_steps: int, warmup_steps: int, checkpoint_every: int) -> TrainConfig:
    return TrainConfig(
        n_steps=n_steps,
        batch_size=128,
        lr=2e-4,
        warmup_steps=warmup_steps,
        grad_clip=1.0,
        checkpoint_every=checkpoint_every,
        log_every=100,
        device="auto",
    )


def _mnist_cpu_config() -> RunConfig:
    """MNIST digits on a 2-core laptop in about ten minutes: the 10 000 test digits (9 000 trained on, the last 1 000
    held out), the tiny U-Net, a large learning rate with warm-up, and an EMA whose warm-up makes it usable early.
    2300 steps of 64 images fill about nine minutes at the ~270 images/s of a quiet 2-core machine; tried and not
    kept (judged by `bench/mnist_cpu.py`'s classifier): width 24 or 32 (2-3x slower per image), a cosine learning
    rate decay (0.71 recognised at step 1800 vs 0.69-0.79 without), 200 sampler steps instead of 100 (0.75 vs 0.79);
    more (wider 7x7 level, log-SNR sampling of t, EDM's noise conditioning, longer EMAs, clipping x0, batch 32 or
    128, a deeper net, Min-SNR weighting) and where the digits are lost (between t = 0.2 and 0.5,
    `bench/mnist_cpu.py`) in the README's "MNIST on a laptop CPU". None of them lifts the recognised share above
    about 0.79; autoguidance does (Karras et al. 2024): `guide_step=575` keeps the EMA at a quarter of the run in
    guide.pt, and `scorelab sample --guide RUN/guide.pt` steers the final model away from that worse one."""
    train = TrainConfig(
        n_steps=2300, batch_size=64, lr=2e-3, warmup_steps=100, grad_clip=1.0, checkpoint_every=200, log_every=25, device="auto"
    )
    return RunConfig(
        dataset="mnist",
        split="test",
        sde="vp",
        train=train,
        ema_decay=0.999,
        sample_every=300,
        n_samples=64,
        sample_steps=100,
        guide_step=575,
    )


#: presets: 16x16 shapes and MNIST on a CPU; MNIST and CIFAR-10 with DDPM-like settings (Ho et al. 2020; Song et al. 2021)
CONFIGS = {
    "shapes-vp": _shapes_config("vp"),
    "shapes-ve": _shapes_config("ve"),
    "mnist-cpu": _mnist_cpu_config(),
    **{
        f"{name}-{sde}": RunConfig(
            dataset=name,
            sde=sde,
            sigma_max=sigma_max,
            random_flip=name == "cifar10",
            unet=UNET_PRESETS[name],
            train=_gpu_train(steps, warmup, every),
            ema_decay=0.9999,
            sample_every=5000,
            sample_steps=1000,
        )
        # sigma_max (VE): Song & Ermon 2020's Technique 1, about the largest distance between two training images in
        # [-1, 1]: 31.9 over the 10 000 MNIST test digits (50 leaves room); CIFAR-10's 50 in score_sde is for [0, 1]
        # pixels, twice that here, under the bound 2 sqrt(3072) = 111. `train` checks it against a sample of the data.
        for name, steps, warmup, every, sigma_max in (
            ("mnist", 100_000, 1000, 5000, 50.0),
            ("cifar10", 800_000, 5000, 10_000, 100.0),
        )
        for sde in ("vp", "ve")
    },
}


# --- key=value overrides, parsed by the dataclass field types -------------------------------------------------


def _parse_value(text: str, kind, key: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # X | None
        if text.lower() == "none" and type(None) in args:
            return None
        return _parse_value(text, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        return tuple(_parse_value(part, args[0], key) for part in text.split(",") if part.strip())
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{key} must be true or false, got {text!r}")
        return text.lower() in ("true", "1")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{key} must be a {kind.__name__}, got {text!r}") from None


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """`config` with `key=value` overrides applied (see the module docstring for the keys)."""
    run_types = typing.get_type_hints(RunConfig)
    train_types, unet_types = typing.get_type_hints(TrainConfig), typing.get_type_hints(UNetConfig)
    run, train, unet = {}, {}, {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"overrides look like key=value, got {item!r}")
        if key == "unet":
            check_choice("unet", text, UNET_PRESETS)
            config = replace(config, unet=UNET_PRESETS[text])
        elif key.startswith("unet.") and key[5:] in unet_types:
            unet[key[5:]] = _parse_value(text, unet_types[key[5:]], key)
        elif key in run_types and key != "train":
            run[key] = _parse_value(text, run_types[key], key)
        elif key.removeprefix("train.") in train_types:
            train[key.removeprefix("train.")] = _parse_value(text, train_types[key.removeprefix("train.")], key)
        else:
            names = [f.name for f in fields(RunConfig) if f.name != "train"] + [f.name for f in fields(TrainConfig)]
            raise ValueError(f"unknown setting {key!r}: use one of {', '.join(names)}, or unet.FIELD")
    return replace(config, **run, train=replace(config.train, **train), unet=replace(config.unet, **unet))


# --- data, model, samples --------------------------------------------------------------------------------------


def load_images(config: RunConfig, data_dir, *, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`(pixels, labels)` of the whole split, training images first and the `holdout` images last; with `download`,
    missing files are fetched by torchvision into `data_dir` first."""
    if config.dataset == "shapes":
        return datasets.shapes(
            config.n_images + config.holdout, config.image_size, weights=config.shape_weights, generator=config.train.seed
        )
    if data_dir is None:
        raise ValueError(f"dataset {config.dataset!r} reads files: pass --data FOLDER (see scorelab.datasets for the files expected)")
    pixels, labels = datasets.IMAGE_DATASETS[config.dataset](data_dir, config.split, download=download)
    if config.holdout >= len(pixels):
        raise ValueError(f"holdout={config.holdout} leaves nothing to train on: the {config.split} split has {len(pixels)} images")
    return pixels, labels


def build_model(config: RunConfig, channels: int) -> UNet:
    """The run's U-Net, with as many channels as the data."""
    return UNet(replace(config.unet, channels=channels))


def _from_plain(cls, values: dict):
    """A config dataclass from plain data (a checkpoint's or a JSON file's): lists become the tuples the fields expect."""
    kinds = typing.get_type_hints(cls)
    return cls(**{k: tuple(v) if isinstance(v, list) and typing.get_origin(kinds.get(k)) is tuple else v for k, v in values.items()})


def run_config_from_dict(stored, source) -> RunConfig:
    """The `RunConfig` that `dataclasses.asdict` turned into `stored` (a checkpoint's metadata, a `config.json`)."""
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source} was not written by `scorelab train` (it holds no run configuration)")
    try:
        return _from_plain(
            RunConfig,
            {**{k: v for k, v in stored.items() if k not in ("unet", "train")},
             "unet": _from_plain(UNetConfig, stored["unet"]), "train": _from_plain(TrainConfig, stored["train"])},
        )  # fmt: skip
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{source} holds a run configuration this version cannot read ({err})") from None


def run_config_from(state: dict, path) -> RunConfig:
    """The `RunConfig` stored in a checkpoint written by `scorelab train`."""
    return run_config_from_dict((state.get("metadata") or {}).get("run"), path)


def base_config(name: str) -> RunConfig:
    """`--config NAME`: a preset of `CONFIGS`, or the `config.json` a run wrote."""
    if name in CONFIGS:
        return CONFIGS[name]
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--config {name}: no such file")
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {name} is not JSON ({err})") from None
        return run_config_from_dict(stored, path)
    raise ValueError(f"--config must be one of {', '.join(sorted(CONFIGS))}, or a run's config.json; got {name!r}")


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(a.keys() | b.keys()):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += _differences(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            out.append(f"{prefix}{key}: {a.get(key)!r} in the checkpoint, {b.get(key)!r} now")
    return out


def draw_samples(
    model: UNet, config: RunConfig, shape, device, *, sampler: str = "pc", generator=0, guide: UNet | None = None,
    guidance: float = 2.0, **options
):  # fmt: skip
    """Images of `shape` `(n, C, H, W)` from `model` by `pc_sample` (`n_steps` defaults to the run's `sample_steps`)
    or `ode_sample`; `(images, nfe or None)`. `generator` (a seed or a `torch.Generator` on `device`) draws the start
    and then the sampler's noise. With a `guide` (a worse version of `model`, e.g. the run's guide.pt), the score is
    `guidance.autoguided_score` with weight `guidance` (two network evaluations per score)."""
    sde = SDES[config.sde](config)
    score = condition_on_std(model, sde)
    if guide is not None:
        score = autoguided_score(score, condition_on_std(guide, sde), guidance)
    generator = generator if isinstance(generator, torch.Generator) else torch.Generator(device).manual_seed(generator)
    x_T = sde.prior_sample(tuple(shape), generator=generator, device=device)
    if sampler == "ode":
        return sampling.ode_sample(score, sde, x_T, return_nfe=True, **options)
    options.setdefault("n_steps", config.sample_steps)
    return sampling.pc_sample(score, sde, x_T, generator=generator, **options), None


# --- the two commands -------------------------------------------------------------------------------------------


#: what a resumed run may change: its length, how it reports, where it runs; never the data, the model or the optimiser
RESUMABLE = ("train.n_steps", "train.progress", "train.log_every", "train.checkpoint_every", "train.device",
             "sample_every", "n_samples", "sample_steps", "classifier", "fid_every", "fid_samples")  # fmt: skip


def _resumed_config(args, checkpoint: Path, overrides: list[str]) -> tuple[RunConfig, dict]:
    """`--resume`: the checkpoint's configuration with this call's overrides, and its metadata."""
    if not checkpoint.exists():
        raise ValueError(f"--resume: there is no {checkpoint} to resume")
    state = load_checkpoint(checkpoint)
    stored = run_config_from(state, checkpoint)
    metadata = state["metadata"]
    if args.config and metadata.get("preset") and args.config != metadata["preset"]:
        raise ValueError(f"--resume: {checkpoint} was started with --config {metadata['preset']}, not {args.config}")
    config = apply_overrides(stored, overrides)
    changed = [d for d in _differences(asdict(stored), asdict(config)) if not d.startswith(RESUMABLE)]
    if changed:
        raise CheckpointError(f"--resume continues {checkpoint} as it was configured; these cannot change: {'; '.join(changed)}")
    return config, metadata


def _keep_log_until(path: Path, step: int) -> None:
    """Drop the log records of steps after `step`: a resumed run repeats them from its checkpoint."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step))


def _flipped_batches(images: torch.Tensor):
    """A sampler `(n, generator=)` of training batches, each image mirrored left-right with probability 1/2."""

    def draw(n: int, generator: torch.Generator) -> torch.Tensor:
        batch = images[torch.randint(len(images), (n,), generator=generator, device=images.device)]
        flip = torch.rand(n, generator=generator, device=images.device) < 0.5
        return torch.where(append_dims(flip, batch.ndim), batch.flip(-1), batch)

    return draw


def _check_sigma_max(config: RunConfig, images: torch.Tensor, generator: int) -> None:
    """Warn when a VE run's sigma_max is below the largest distance between two of 2000 training images
    (Song & Ermon 2020, Technique 1: sigma_max should be about the largest distance over all of them)."""
    if config.sde != "ve":
        return
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(generator))[:2000]
    largest = sigma_max_from_data(images[pick])
    if config.sigma_max < largest:
        print(f"warning: sigma_max={config.sigma_max} is below {largest:.1f}, the largest distance between two of "
              f"{len(pick)} training images: the prior will not cover the data (Technique 1)", file=sys.stderr)  # fmt: skip


def train_command(args) -> Path:
    overrides = _shorthands(args) + args.overrides
    if args.out is None and (args.config is None or args.config not in CONFIGS):
        raise ValueError("pass --out FOLDER (the default, runs/CONFIG, needs a preset name in --config)")
    out = Path(args.out or f"runs/{args.config}")
    checkpoint = out / "checkpoint.pt"
    if args.resume:
        config, stored = _resumed_config(args, checkpoint, overrides)
        data_dir = args.data or stored.get("data")
    else:
        if args.config is None:
            raise ValueError("pass --config (a preset or a run's config.json), or --resume to continue the run in --out")
        if checkpoint.exists():
            raise ValueError(f"{checkpoint} exists: pass --resume to continue that run, or choose another --out")
        config, stored, data_dir = apply_overrides(base_config(args.config), overrides), {}, args.data
    device = resolve_device(config.train.device or "auto")
    rank, world = init_distributed(device)

    pixels, _ = load_images(config, data_dir, download=args.download)
    images = datasets.to_model_range(pixels[: len(pixels) - config.holdout])
    if rank == 0:
        _check_sigma_max(config, images, config.train.seed)
    torch.manual_seed(config.train.seed)
    model = build_model(config, images.shape[1])
    if images.shape[2] % model.config.downsampling or images.shape[3] % model.config.downsampling:
        raise ValueError(f"{config.dataset} images are {tuple(images.shape[2:])}: not divisible by the U-Net's {model.config.downsampling}")
    ema = EMA(model, config.ema_decay)
    sde = SDES[config.sde](config)
    image_shape = tuple(images.shape[1:])
    n_pixels = images[0].numel()
    data = _flipped_batches(images.to(device)) if config.random_flip else images

    def loss_fn(net, batch, generator):  # per pixel, as DDPM's loss, so grad_clip=1.0 clips spikes, not every step
        score = condition_on_std(net, sde)
        loss = losses.sde_dsm(score, batch, sde, config.weighting, config.eps, generator, snr_gamma=config.snr_gamma)
        return loss / n_pixels

    metadata = {
        "run": asdict(config),
        "image_shape": list(image_shape),
        "preset": stored.get("preset", args.config if args.config in CONFIGS else None),
        "data": str(Path(data_dir).resolve()) if data_dir else None,
        "train_seconds": float(stored.get("train_seconds", 0.0)),  # the training clock, kept across resumes
    }
    done = len(load_checkpoint(checkpoint)["history"]) if args.resume else 0
    if rank == 0:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        _keep_log_until(out / "log.jsonl", done)
    if rank == 0 and not args.resume:
        (out / "guide.pt").unlink(missing_ok=True)  # a fresh run's guide is its own, never a stale file of another run
    fid_every = config.fid_every or config.sample_every
    log = {"time": time.perf_counter(), "step": None, "sampled": done // max(config.sample_every, 1), "measured": done // max(fid_every, 1)}

    def write_grid(step: int) -> Path:
        images, _ = draw_samples(ema.module, config, (config.n_samples, *image_shape), device, n_steps=config.sample_steps)
        path = out / "samples" / f"step_{step:07d}.png"
        save_image_grid(images, path)
        return path

    def save_guide(step: int) -> None:  # the EMA weights at guide_step (the next read-out at or after it)
        state = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "ema": ema.state_dict(),
                 "metadata": {**metadata, "step": step, "guide_of": str(checkpoint)}}  # fmt: skip
        save_checkpoint(state, out / "guide.pt")

    # every rank reads the classifier, so a bad path stops all of them before training; only rank 0 measures
    judge = load_classifier(config.classifier, device)[0] if config.classifier else None
    holdout = datasets.to_model_range(pixels[len(pixels) - config.holdout :]) if judge is not None else None

    def measure_fid(step: int) -> dict:  # classifier-FID of EMA samples against the holdout images
        fakes, _ = draw_samples(ema.module, config, (config.fid_samples, *image_shape), device, n_steps=config.sample_steps)
        r = metrics.classifier_fid(holdout, fakes.clamp(-1, 1), judge)  # pixel range, as saved images are
        return {
            "step": step,
            "train_seconds": metadata["train_seconds"],
            "classifier_fid": r.fid,
            "mean_confidence": r.mean_confidence,
            "confident_fraction": r.confident_fraction,
            "class_histogram": [round(float(v), 4) for v in r.class_histogram],
        }

    def on_log(info: dict) -> None:  # rank 0 only: a JSON line of loss and speed, and a grid every sample_every steps
        step, now = info["i"] + 1, time.perf_counter()
        done = step - (log["step"] if log["step"] is not None else step - len(info["losses"]))
        metadata["train_seconds"] += now - log["time"]
        record = {
            "step": step,
            "loss": info["loss"],
            "images_per_s": done * config.train.batch_size * world / (now - log["time"]),
            "train_seconds": metadata["train_seconds"],
        }
        if "grad_norm" in info:
            record["grad_norm"] = info["grad_norm"]  # before clipping: how often grad_clip acts
        records = [record]
        if judge is not None and fid_every and step // fid_every > log["measured"]:
            log["measured"] = step // fid_every
            records.append(measure_fid(step))
        with open(out / "log.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        if config.sample_every and step // config.sample_every > log["sampled"]:
            log["sampled"] = step // config.sample_every
            write_grid(step)
        if config.guide_step and step - done < config.guide_step <= step:  # the read-out at or just after guide_step
            save_guide(step)
        log["time"], log["step"] = time.perf_counter(), step

    fit(model, loss_fn, data, config.train, ema=ema, checkpoint=checkpoint, callback=on_log, metadata=metadata)
    if rank == 0:
        grid = write_grid(config.train.n_steps)
        print(f"checkpoint: {checkpoint}\nsamples: {grid}\nlog: {out / 'log.jsonl'}")
        if config.guide_step and (out / "guide.pt").exists():
            kept = load_checkpoint(out / "guide.pt")["metadata"]["step"]
            print(f"guide for `scorelab sample --guide`: {out / 'guide.pt'} (the EMA weights at step {kept})")
        elif config.guide_step:
            print(f"no guide.pt: no read-out of this run reached guide_step {config.guide_step} (it ended before, or resumed after it)")
    return checkpoint


def load_model(path, weights: str = "ema", device="cpu") -> tuple[UNet, RunConfig, dict]:
    """(the network in eval mode on `device`, its run's configuration, the file's metadata: `image_shape`, `data`,
    ...) from a checkpoint or guide written by `scorelab train`; `weights` "ema" (the average, when the file has
    one) or "model" (the raw weights)."""
    state = load_checkpoint(path)
    config = run_config_from(state, path)
    image_shape = tuple(state["metadata"]["image_shape"])
    model = build_model(config, image_shape[0])
    try:
        model.load_state_dict(state["ema"]["module"] if weights == "ema" and state.get("ema") else state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the stored configuration ({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), config, state["metadata"]


def sample_command(args) -> Path:
    check_int("--n", args.n, minimum=1)
    check_int("--batch-size", args.batch_size, minimum=1)
    check_int("--grid", args.grid, minimum=1)
    if args.steps is not None:
        check_int("--steps", args.steps, minimum=1)
    if args.guidance is not None and args.guide is None:
        raise ValueError("--guidance is the weight of --guide: pass --guide (a run's guide.pt) too")
    device = resolve_device(args.device)
    model, config, metadata = load_model(args.ckpt, args.weights, device)
    image_shape = tuple(metadata["image_shape"])
    options = {"n_steps": args.steps} if args.steps else {}  # default: the run's sample_steps, or adaptive dopri5
    if args.guide is not None:
        guide, guide_config, guide_metadata = load_model(args.guide, args.weights, device)
        guide_shape = tuple(guide_metadata["image_shape"])
        if guide_shape != image_shape:
            raise ValueError(f"--guide {args.guide} makes images of shape {guide_shape}, the model {image_shape}")
        keys = ("sde", "beta_min", "beta_max", "sigma_min", "sigma_max")  # the guide's scores must be of the same SDE
        differ = [
            f"{k}: {getattr(guide_config, k)!r} vs {getattr(config, k)!r}" for k in keys if getattr(guide_config, k) != getattr(config, k)
        ]
        if differ:
            raise ValueError(f"--guide {args.guide} was trained with another SDE than --ckpt ({'; '.join(differ)})")
        options.update(guide=guide, guidance=check_nonnegative("--guidance", 2.0 if args.guidance is None else args.guidance))
    if args.sampler == "pc":
        options.update(predictor=_none(args.predictor), corrector=_none(args.corrector), snr=args.snr)
    elif args.steps:
        options.update(method="euler")
    generator = torch.Generator(device).manual_seed(args.seed)
    if args.inpaint:
        if args.sampler != "pc":
            raise ValueError("--inpaint needs --sampler pc (the probability-flow ODE has no inpainting form here)")
        if not config.holdout:
            raise ValueError("--inpaint fills in the run's holdout images, and this run was trained with holdout=0")
        pixels, _ = load_images(config, args.data or metadata.get("data"), download=args.download)
        originals = datasets.to_model_range(pixels[len(pixels) - config.holdout :][: args.n]).to(device)
        mask = torch.zeros_like(originals, dtype=torch.bool)
        mask[:, :, : originals.shape[2] // 2] = True  # the upper half is known, the lower half is filled in
        images, _ = draw_samples(model, config, originals.shape, device, generator=generator, mask=mask, known=originals, **options)
        grid = torch.cat([torch.where(mask, originals, torch.full_like(originals, -1.0)), images, originals])
        save_image_grid(grid, args.out, n_cols=len(originals))
        print(f"rows: known upper halves, inpainted, originals -> {args.out}")
        return Path(args.out)
    sizes = [min(args.batch_size, args.n - start) for start in range(0, args.n, args.batch_size)]
    batches, nfe = [], 0
    with torch.no_grad(), tqdm(sizes, desc="sample", unit="batch", **progress_options(len(sizes) > 1)) as bar:
        for size in bar:  # one generator for all batches: the same --seed, --n and --batch-size give the same images
            images, batch_nfe = draw_samples(
                model, config, (size, *image_shape), device, sampler=args.sampler, generator=generator, **options
            )
            batches.append(images.clamp(-1, 1).cpu())
            nfe += batch_nfe or 0
    images = torch.cat(batches)
    save_image_grid(images[: args.grid], args.out)
    if args.npz:
        np.savez_compressed(args.npz, images=datasets.to_pixels(images).numpy(), seed=args.seed, sampler=args.sampler)
    cost = f", {nfe / len(sizes):.0f} score evaluations a batch" if args.sampler == "ode" else ""
    cost += ", each two network evaluations (autoguidance)" if cost and args.guide else ""
    saved = f"; all {args.n} as uint8 pixels -> {args.npz}" if args.npz else ""
    print(f"{args.n} samples ({args.sampler}{cost}), the first {min(args.grid, args.n)} -> {args.out}{saved}")
    return Path(args.out)


#: `scorelab classifier --config NAME`: the data settings of preset NAME-vp, and default optimiser steps (batch 128)
CLASSIFIER_STEPS = {"shapes": 300, "mnist": 2000, "cifar10": 6000}


def classifier_command(args) -> Path:
    """Train `nets.ImageClassifier` on a dataset's training images, report its accuracy on the `holdout` images
    (the ones `scorelab train` never sees) and write `classifier.pt`, the judge of `metrics.classifier_fid`."""
    config = CONFIGS[f"{args.config}-vp"]
    if args.split:
        config = replace(config, split=args.split)
    steps = args.steps or CLASSIFIER_STEPS[args.config]
    train = TrainConfig(n_steps=steps, batch_size=args.batch_size or 128, lr=3e-3, warmup_steps=min(100, steps // 10),
                        log_every=50, device=args.device, progress=config.train.progress, seed=args.seed)  # fmt: skip
    config = replace(config, train=train)
    device = resolve_device(args.device)
    pixels, labels = load_images(config, args.data, download=args.download)
    images = datasets.to_model_range(pixels)
    n_train = len(images) - config.holdout
    n_classes = int(labels.max()) + 1
    torch.manual_seed(args.seed)
    spec = {"channels": images.shape[1], "n_classes": n_classes, "width": args.width}
    model = ImageClassifier(**spec)
    out = Path(args.out or f"runs/{args.config}-classifier")
    path = out / "classifier.pt"
    if path.exists():
        raise ValueError(f"{path} exists: choose another --out (a classifier is cheap to retrain, never silently replaced)")
    fit(model, lambda m, b, g: F.cross_entropy(m(b[0]), b[1]), (images[:n_train], labels[:n_train]), train)
    model.eval()
    with torch.no_grad():
        held = [model(chunk.to(device)).argmax(1).cpu() for chunk in images[n_train:].split(500)]
    accuracy = (torch.cat(held) == labels[n_train:]).double().mean().item()
    metadata = {"classifier": spec, "dataset": config.dataset, "split": config.split, "holdout": config.holdout,
                "image_shape": list(images.shape[1:]), "holdout_accuracy": accuracy, "steps": steps}  # fmt: skip
    state = {"format": CHECKPOINT_FORMAT, "model": {k: v.cpu() for k, v in model.state_dict().items()}, "metadata": metadata}
    save_checkpoint(state, path)
    print(f"classifier: accuracy {accuracy:.4f} on the {config.holdout} holdout images of {config.dataset} -> {path}")
    return path


def load_classifier(path, device="cpu") -> tuple[ImageClassifier, dict]:
    """The `ImageClassifier` written by `scorelab classifier`, in eval mode on `device`, and its metadata (accuracy)."""
    state = load_checkpoint(path, required=("model", "metadata"))
    meta = state["metadata"]
    if not isinstance(meta, dict) or not isinstance(meta.get("classifier"), dict):
        raise CheckpointError(f"{path} was not written by `scorelab classifier` (no classifier specification)")
    model = ImageClassifier(**meta["classifier"])
    _load_module_state(model, state["model"], "classifier", Path(path))
    return model.to(device).eval(), meta


def _none(name: str) -> str | None:
    return None if name == "none" else name


def _shorthands(args) -> list[str]:
    return [f"{k}={v}" for k, v in (("n_steps", args.steps), ("batch_size", args.batch_size)) if v is not None]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scorelab", description="Train and sample score-based image models.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train", help="train a U-Net with sde_dsm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    t.add_argument("--config", help=f"preset to start from ({', '.join(sorted(CONFIGS))}), or a run's config.json")
    t.add_argument("--data", help="folder with the dataset's standard files (not needed for shapes; a resumed run remembers it)")
    t.add_argument("--download", action="store_true", help="fetch missing dataset files into --data (needs torchvision)")
    t.add_argument("--out", help="run folder: checkpoint.pt, log.jsonl, samples/, config.json (default runs/CONFIG)")
    t.add_argument("--steps", type=int, help="total optimiser steps (n_steps)")
    t.add_argument("--batch-size", type=int, help="images per step and process (batch_size)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out with its stored settings (these may change: " + ", ".join(RESUMABLE) + ")",
    )
    t.add_argument("overrides", nargs="*", metavar="key=value", help="override any RunConfig, TrainConfig or unet.FIELD setting")
    t.set_defaults(overrides=[])
    c = sub.add_parser("classifier", help="train the small classifier that classifier-FID uses")
    c.add_argument("--config", required=True, choices=sorted(CLASSIFIER_STEPS), help="dataset (its preset's data settings)")
    c.add_argument("--data", help="folder with the dataset's standard files (not needed for shapes)")
    c.add_argument("--download", action="store_true", help="fetch missing dataset files into --data (needs torchvision)")
    c.add_argument("--split", choices=sorted(datasets.IDX_FILES), help="split to use (default: the preset's); its last images are held out")
    c.add_argument("--out", help="folder for classifier.pt (default runs/CONFIG-classifier)")
    c.add_argument("--steps", type=int, help="optimiser steps (default per dataset)")
    c.add_argument("--batch-size", type=int, help="images per step (default 128)")
    c.add_argument("--width", type=int, default=16, help="channels of the first convolution")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto")
    s = sub.add_parser("sample", help="draw images from a trained checkpoint")
    s.add_argument("--ckpt", required=True, help="checkpoint.pt written by scorelab train")
    s.add_argument("--sampler", choices=("pc", "ode"), default="pc")
    s.add_argument("--predictor", choices=[str(k) for k in sampling.PREDICTORS if k] + ["none"], default="reverse_diffusion")
    s.add_argument("--corrector", choices=[str(k) for k in sampling.CORRECTORS if k] + ["none"], default="langevin")
    s.add_argument("--snr", type=float, default=0.16, help="corrector signal-to-noise ratio")
    s.add_argument(
        "--steps", type=int, help="PC steps (default: the run's sample_steps), or fixed Euler steps of the ODE (default adaptive dopri5)"
    )
    s.add_argument("--n", type=int, default=64, help="number of images")
    s.add_argument("--batch-size", type=int, default=256, help="images sampled at once (--n is drawn in batches)")
    s.add_argument("--out", default="samples.png", help="PNG grid of the first --grid images")
    s.add_argument("--grid", type=int, default=64, help="images in the PNG grid")
    s.add_argument("--npz", help="also write all --n images as uint8 pixels to this .npz (key 'images')")
    s.add_argument("--inpaint", action="store_true", help="fill in the lower half of held-out images (reads the run's data folder)")
    s.add_argument("--data", help="dataset folder, for --inpaint (default: the one the run was trained on)")
    s.add_argument("--download", action="store_true", help="fetch missing dataset files into --data (needs torchvision)")
    s.add_argument("--weights", choices=("ema", "model"), default="ema", help="the EMA average (default) or the raw weights")
    s.add_argument("--guide", help="a worse version of the model (the guide.pt of a run with guide_step): autoguidance")
    s.add_argument("--guidance", type=float, help="autoguidance weight w with --guide (default 2.0; 1 is no guidance)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    return p


COMMANDS = {"train": train_command, "sample": sample_command, "classifier": classifier_command}


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def main(argv: list[str] | None = None) -> int:
    """The `scorelab` console script. Returns 0, or 2 with a one-line reason for a wrong call."""
    p = parser()
    args, rest = p.parse_known_args(argv)  # key=value overrides may come between and after the options
    if args.command == "train":
        args.overrides = [*args.overrides, *rest]
    if args.command != "train" and rest or any("=" not in item or item.startswith("-") for item in rest):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        COMMANDS[args.command](args)
        if _distributed():  # every rank done before any tears the group down (gloo can abort a process that exits mid-way)
            torch.distributed.barrier()
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:  # CheckpointError is a ValueError
        print(f"scorelab {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if _distributed():
            torch.distributed.destroy_process_group()
    return 0
