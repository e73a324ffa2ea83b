"""One training loop for every model in scorelab, with atomic checkpoints and exact resume.

All randomness of a run (minibatch indices, noise inside the loss) comes from one
`torch.Generator` seeded by `TrainConfig.seed`; its state is saved in the checkpoint,
so a run that is interrupted and resumed ends bit-for-bit where an uninterrupted run
ends (on the same machine). Introduced in lesson 02.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._checks import check_callable, check_int, check_positive, check_tensor
from .nets import EMA

CHECKPOINT_FORMAT = "scorelab-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupt, or holds more than tensors and plain containers."""


@dataclass
class TrainConfig:
    n_steps: int = 2000  # optimiser steps in total (a resumed run counts the steps already done)
    batch_size: int = 256  # samples per step
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # seeds the one generator used for batches and loss noise
    grad_clip: float | None = None  # max global gradient norm, None for no clipping
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end, when a path is given)
    progress: bool = True  # tqdm progress bar (TQDM_DISABLE=1 silences it, as CI does)

    def __post_init__(self):
        check_int("n_steps", self.n_steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_positive("lr", self.lr, allow_tensor=False)
        check_int("seed", self.seed, minimum=0)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip, allow_tensor=False)
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)


def save_checkpoint(state: dict, path) -> None:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A failure part-way leaves any previous checkpoint at `path` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint with `torch.load(weights_only=True)`; raise `CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError or UnpicklingError depending on the damage
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"refusing to load {path}: it holds objects other than tensors and plain containers "
                "(only weights_only=True loads are allowed)"
            ) from None
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a scorelab checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


def _batch_source(data, batch_size: int, generator: torch.Generator):
    """A function returning one minibatch: sampled from a tensor (with replacement) or a sampler."""
    if isinstance(data, torch.Tensor):
        check_tensor("data", data, min_dim=2)
        return lambda: data[torch.randint(len(data), (batch_size,), generator=generator)]
    check_callable("data", data)
    return lambda: data(batch_size, generator=generator)


def fit(
    model: torch.nn.Module,
    loss_fn: Callable,
    data,
    config: TrainConfig | None = None,
    *,
    ema: EMA | None = None,
    checkpoint=None,
    callback: Callable[[dict], None] | None = None,
) -> list[float]:
    """Train `model` with Adam on `loss_fn(model, batch, generator)`; return the loss history.

    Args:
        model: any `torch.nn.Module`.
        loss_fn: `(model, batch, generator) -> scalar loss`, e.g.
            `lambda m, x, g: losses.dsm(m, x, 0.1, generator=g)`.
        data: a tensor `(N, *dims)` to draw minibatches from, or a sampler
            `(n, generator=) -> (n, *dims)` (fresh data every step).
        config: `TrainConfig`; defaults when omitted.
        ema: optional `EMA` of the model, updated after every step and checkpointed.
        checkpoint: optional path. If the file exists the run resumes from it exactly;
            it is (re)written atomically every `config.checkpoint_every` steps and at the end.
        callback: called after every step with `{"i": step, "loss": float}`.

    Returns:
        list of per-step losses, resumed steps included. Raises `FloatingPointError`
        with a hint when the loss stops being finite.
    """
    config = config or TrainConfig()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_callable("loss_fn", loss_fn)
    generator = torch.Generator().manual_seed(config.seed)
    next_batch = _batch_source(data, config.batch_size, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[float] = []

    if checkpoint is not None and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            if state["ema"] is None:
                raise CheckpointError(f"{checkpoint} has no EMA state but an ema was passed")
            ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        history = state["history"].tolist()

    def snapshot() -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "generator": generator.get_state(),
            "history": torch.tensor(history, dtype=torch.float64),
        }

    model.train()
    bar_options = {} if config.progress else {"disable": True}
    with tqdm(range(len(history), config.n_steps), desc="fit", initial=len(history), total=config.n_steps, **bar_options) as bar:
        for i in bar:
            loss = loss_fn(model, next_batch(), generator)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ValueError(
                    f"loss_fn must return a scalar tensor (the mean over the batch), got {shape}: "
                    "pass reduction='mean' to the loss, or reduce it with .mean()"
                )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {i}: lower the learning rate (lr={config.lr}) or set grad_clip in TrainConfig"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            history.append(loss.item())
            if i % 50 == 0:
                bar.set_postfix(loss=f"{history[-1]:.4g}")
            if checkpoint is not None and config.checkpoint_every and (i + 1) % config.checkpoint_every == 0:
                save_checkpoint(snapshot(), checkpoint)
            if callback is not None:
                callback({"i": i, "loss": history[-1]})
    if checkpoint is not None:
        save_checkpoint(snapshot(), checkpoint)
    model.eval()
    return history
