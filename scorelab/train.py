"""One training loop for every model in scorelab, with atomic checkpoints and exact resume.

All randomness of a run (minibatch indices, noise inside the loss) comes from one
`torch.Generator` seeded by `TrainConfig.seed`; its state is saved in the checkpoint,
so a run that is interrupted and resumed ends bit-for-bit where an uninterrupted run
ends (on the same machine). Introduced in lesson 02.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ._checks import check_callable, check_choice, check_device, check_int, check_path, check_positive, check_tensor
from .nets import EMA
from .threads import adapt as adapt_threads

CHECKPOINT_FORMAT = "scorelab-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupt, or holds more than tensors and plain containers."""


#: numeric precisions of a training step
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    n_steps: int = 2000  # optimiser steps in total (a resumed run counts the steps already done)
    batch_size: int = 256  # samples per step and process (K processes under torchrun: K * batch_size per step)
    lr: float = 1e-3  # Adam learning rate (after warm-up)
    seed: int = 0  # seeds the generators of batches and loss noise
    grad_clip: float | None = None  # max global gradient norm, None for no clipping
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end, when a path is given)
    progress: bool = True  # tqdm progress bar (TQDM_DISABLE=1 silences it, as CI does)
    warmup_steps: int = 0  # the learning rate grows linearly from lr / warmup_steps to lr over the first steps
    lr_schedule: str = "constant"  # after warm-up: "constant", or "cosine" (half a cosine from lr down to 0 at n_steps)
    log_every: int = 1  # steps between loss read-outs (a host sync on a GPU: use 50-100 there) and callbacks
    device: str | None = None  # None: where the model already is; "auto" (cuda:LOCAL_RANK if CUDA is there, else cpu), "cpu", "cuda:K"
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on the CPU), "fp32", or "bf16" (CUDA only)
    channels_last: bool = True  # on CUDA, image batches and the model in NHWC layout (faster convolutions); no effect on the CPU

    def __post_init__(self):
        check_int("n_steps", self.n_steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_positive("lr", self.lr, allow_tensor=False)
        check_int("seed", self.seed, minimum=0)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip, allow_tensor=False)
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_int("log_every", self.log_every, minimum=1)
        check_choice("precision", self.precision, PRECISIONS)
        if self.device is not None and not isinstance(self.device, str):
            raise TypeError(f"device must be None or a string such as 'auto', 'cpu' or 'cuda', got {type(self.device).__name__}")
        if self.device not in (None, "auto"):
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:K', got {self.device!r}") from None


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate `fit` uses at (0-based) `step`: linear warm-up over `warmup_steps` to `lr`, then constant,
    or with `lr_schedule="cosine"` half a cosine from `lr` down to 0 at `n_steps` (Loshchilov & Hutter 2017, SGDR
    without restarts). A pure function of the step, so a resumed run continues the same schedule (unless it changes
    `n_steps`, which stretches the cosine from there on)."""
    check_int("step", step, minimum=0)
    scale = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.lr_schedule == "cosine" and step >= config.warmup_steps:
        done = (step - config.warmup_steps) / max(config.n_steps - config.warmup_steps, 1)
        scale *= 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
    return config.lr * scale


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device a `TrainConfig.device` string names on this machine (under torchrun, cuda:LOCAL_RANK).

    A CUDA device on a machine without one is a clear `ValueError`, not a crash later."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    resolved = check_device("device", device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = check_device("device", torch.device("cuda", local_rank))
    return resolved


def init_distributed(device: torch.device) -> tuple[int, int]:
    """`(rank, world_size)`. Under torchrun (WORLD_SIZE > 1 in the environment) this joins the process group it
    describes, NCCL on CUDA and gloo on the CPU, unless the caller already has; a plain run is `(0, 1)`."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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


def load_checkpoint(path, map_location="cpu", required=()) -> dict:
    """Read a checkpoint with `torch.load(weights_only=True)`; raise `CheckpointError` with the reason: not a torch
    file, truncated, holding code, not tagged as a scorelab checkpoint, or lacking one of the `required` keys."""
    path = check_path("path", path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if isinstance(map_location, (str, torch.device)):
        check_device("map_location", map_location)
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (or, long ago, a pickle)
        raise CheckpointError(f"{path} is not a torch checkpoint file (neither a zip archive nor a pickle): wrong file?")
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
    if state.keys() == {"format"}:
        raise CheckpointError(f"{path} holds the format tag and no state (no weights, no metadata): an interrupted or foreign write?")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} is a scorelab checkpoint but lacks {', '.join(missing)}: written by another tool or version?")
    return state


def _batch_source(data, batch_size: int, generator: torch.Generator, rank: int, world: int, device, channels_last: bool):
    """A function returning this process's minibatch, on `device`.

    All processes draw the same global batch of `world * batch_size` (indices into the tensors, with replacement, or
    a sampler's draw) from a generator they share, and each keeps its own slice: K processes at batch B see exactly
    the batches of one process at batch K * B.
    """
    mine = slice(rank * batch_size, (rank + 1) * batch_size)

    def place(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device)
        return batch.contiguous(memory_format=torch.channels_last) if channels_last and batch.ndim == 4 else batch

    if callable(data) and not isinstance(data, torch.Tensor):
        return lambda: place(data(world * batch_size, generator=generator)[mine])
    tensors = data if isinstance(data, tuple) else (data,)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(f"data must be a tensor, a tuple of tensors or a sampler (n, generator=) -> tensor, got {type(data).__name__}")
    check_tensor("data", tensors[0], min_dim=2)
    if any(len(t) != len(tensors[0]) for t in tensors):
        raise ValueError(f"the tensors in data must have the same length, got {[len(t) for t in tensors]}")
    tensors = tuple(t.to(device) for t in tensors)

    def draw():
        index = torch.randint(len(tensors[0]), (world * batch_size,), generator=generator, device=device)[mine]
        batch = tuple(place(t[index]) for t in tensors)
        return batch if isinstance(data, tuple) else batch[0]

    return draw


def progress_options(show: bool = True) -> dict:
    """tqdm options: hidden unless `show`; redrawn at most every 30 s when stderr is not a terminal (a log file gets
    a line per redraw, not one per step). TQDM_MININTERVAL and TQDM_DISABLE in the environment still win."""
    if not show:
        return {"disable": True}
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return {} if interactive or "TQDM_MININTERVAL" in os.environ else {"mininterval": 30.0}


def _checkpoint_path(checkpoint) -> Path | None:
    """The checkpoint path, checked before any training: a file path in a folder this process can write."""
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path (str or pathlib.Path), got {type(checkpoint).__name__}")
    path = Path(checkpoint)
    if path.is_dir():
        raise ValueError(f"checkpoint must be a file path, got the folder {path}: pass e.g. {path / 'run.pt'}")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the checkpoint folder {folder}: {err.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"the checkpoint folder {folder} is not writable")
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Delete `.NAME.tmp-PID` files that an interrupted `save_checkpoint` of this checkpoint left behind."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)


def _load_module_state(module: torch.nn.Module, state: dict, what: str, path: Path) -> None:
    """`module.load_state_dict(state)`, or a `CheckpointError` that says how the architectures differ."""
    own = module.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        details = [
            f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("different shapes:", shapes))
            if names
        ]
        raise CheckpointError(f"{path} holds a {what} of another architecture ({'; '.join(details)})")
    module.load_state_dict(state)


#: what `fit` writes into a checkpoint, besides the format tag ("module_rng" too, absent from older checkpoints)
CHECKPOINT_KEYS = ("config", "model", "optimizer", "ema", "generator", "rank_generators", "world_size", "history")


#: a run's random streams besides the shared batch generator, each seeded per process by `_stream_seed`
STREAMS = {"loss_noise": 1, "module": 2}


def _stream_seed(seed: int, rank: int, stream: str) -> int:
    """The seed of one random stream of process `rank`, mixed by numpy's `SeedSequence`. Seeds that differ only
    above bit 31 would not do: torch's CPU generator keeps the low 32 bits, so every rank would draw alike."""
    return int(np.random.SeedSequence([seed, rank, STREAMS[stream]]).generate_state(1, np.uint64)[0])


def _module_rng_state(device: torch.device) -> list[torch.Tensor]:
    """The states of the generators modules draw from without a `generator=` argument (dropout): the CPU's, and
    `device`'s when it is a GPU."""
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def _set_module_rng_state(states: list[torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[1], device)


@contextmanager
def _deferred_signals(enabled: bool):
    """While active, SIGINT and SIGTERM only set `flags["signal"]`; `fit` checkpoints, then re-raises the signal."""
    flags = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flags
        return
    # a signal this process ignores (SIG_IGN, as a shell gives background jobs for SIGINT) stays ignored
    wanted = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, lambda signum, frame: flags.update(signal=signum)) for s in wanted}
    try:
        yield flags
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def fit(
    model: torch.nn.Module,
    loss_fn: Callable,
    data,
    config: TrainConfig | None = None,
    *,
    ema: EMA | None = None,
    checkpoint=None,
    callback: Callable[[dict], None] | None = None,
    metadata: dict | None = None,
) -> list[float]:
    """Train `model` with Adam on `loss_fn(model, batch, generator)`; return the loss history.

    The same loop trains a 2-D toy on a laptop and a U-Net on several GPUs. It trains where the model is, or moves
    the model (and `ema`) to `config.device` when that is set; runs the loss under bf16 autocast on CUDA
    (`config.precision`); and, launched by torchrun, wraps the model in `DistributedDataParallel` (NCCL on CUDA,
    gloo on the CPU): gradients are averaged over processes, every process keeps its slice of one global batch,
    and only rank 0 shows progress, calls `callback` and writes checkpoints. The loss is read back every
    `config.log_every` steps, not every step.

    Args:
        model: any `torch.nn.Module`.
        loss_fn: `(model, batch, generator) -> scalar loss`, e.g.
            `lambda m, x, g: losses.dsm(m, x, 0.1, generator=g)`. Use its `model` argument (under DDP it is the
            wrapper that averages gradients), and `generator` for the loss's noise (on the model's device).
        data: a tensor `(N, *dims)` to draw minibatches from; a tuple of such tensors of one length N (images
            and labels, say), drawn with the same indices and passed on as a tuple; or a sampler
            `(n, generator=) -> (n, *dims)` (fresh data every step).
        config: `TrainConfig`; defaults when omitted.
        ema: optional `EMA` of the model, updated after every step and checkpointed.
        checkpoint: optional path. If the file exists the run resumes from it exactly (same number of processes);
            it is (re)written atomically every `config.checkpoint_every` steps, at the end, and when SIGINT or
            SIGTERM arrives (then the signal takes its course). Stale temporary files of it are removed first.
        callback: called every `config.log_every` steps with `{"i": step, "loss": mean loss of those steps,
            "losses": their per-step values}`, and `"grad_norm"` (their mean gradient norm before clipping) when
            `config.grad_clip` is set.
        metadata: plain data (str, numbers, lists, dicts) stored in the checkpoint as `"metadata"`, e.g. the
            run's configuration, so that the checkpoint alone rebuilds the model (`scorelab sample`).

    Randomness: one generator seeded `config.seed` draws the batches (shared by all processes); the loss noise of a
    single process comes from the same generator, that of each rank of a multi-process run from its own generator.
    What the model draws itself (dropout) comes from torch's own generators, which `fit` seeds for the run and
    restores afterwards (the caller's random state is left as it was). Per-rank seeds are mixed from `config.seed`
    and the rank, so no two processes draw the same noise or dropout masks. All of it is checkpointed, so resuming
    ends bit-identical.

    Returns:
        list of per-step losses (averaged over processes), resumed steps included. Raises `FloatingPointError`
        with a hint when the loss stops being finite.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_callable("loss_fn", loss_fn)
    if ema is not None and not isinstance(ema, EMA):
        raise TypeError(f"ema must be a scorelab.EMA of the model or None, got {type(ema).__name__}")
    if ema is not None and [p.shape for p in ema.module.parameters()] != [p.shape for p in model.parameters()]:
        raise ValueError("ema averages a different architecture than model: build it with EMA(model)")
    if callback is not None:
        check_callable("callback", callback)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict of plain data or None, got {type(metadata).__name__}")
    path = _checkpoint_path(checkpoint)
    device = resolve_device(config.device) if config.device is not None else next(model.parameters(), torch.empty(0)).device
    if config.precision == "bf16" and device.type != "cuda":
        raise ValueError("precision='bf16' is a GPU option (bf16 autocast on CUDA); on the CPU use precision='auto' or 'fp32'")
    use_bf16 = device.type == "cuda" and config.precision in ("auto", "bf16")
    channels_last = config.channels_last and device.type == "cuda"
    rank, world = init_distributed(device)

    model.to(device)
    if ema is not None:
        ema.module.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    generator = torch.Generator(device).manual_seed(config.seed)
    noise_generator = generator if world == 1 else torch.Generator(device).manual_seed(_stream_seed(config.seed, rank, "loss_noise"))
    next_batch = _batch_source(data, config.batch_size, generator, rank, world, device, channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[float] = []
    module_rng = None  # this rank's torch generator states, from a checkpoint

    if path is not None:
        if rank == 0:
            _remove_stale_temporaries(path)
        if path.is_file():
            state = load_checkpoint(path, required=CHECKPOINT_KEYS)
            if int(state["world_size"]) != world:
                raise CheckpointError(
                    f"{path} was written by {int(state['world_size'])} processes, this run has {world}: resume with as many"
                )
            _load_module_state(model, state["model"], "model", path)
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                if state["ema"] is None:
                    raise CheckpointError(f"{path} has no EMA state but an ema was passed")
                _load_module_state(ema.module, state["ema"]["module"], "EMA model", path)
                ema.load_state_dict(state["ema"])
            generator.set_state(state["generator"])
            if world > 1:
                noise_generator.set_state(state["rank_generators"][rank])
            history = state["history"].tolist()
            if state.get("module_rng") is not None:
                module_rng = state["module_rng"][rank]

    def snapshot() -> dict:
        rank_states, module_states = None, [_module_rng_state(device)]
        if world > 1:  # a collective: every rank calls snapshot at the same step
            rank_states, module_states = [None] * world, [None] * world
            dist.all_gather_object(rank_states, noise_generator.get_state())
            dist.all_gather_object(module_states, _module_rng_state(device))
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "generator": generator.get_state(),
            "rank_generators": rank_states,
            "module_rng": module_states,
            "world_size": world,
            "history": torch.tensor(history, dtype=torch.float64),
            "metadata": metadata,
        }

    def save():
        state = snapshot()
        if rank == 0:
            save_checkpoint(state, path)

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # the unread losses, then (when clipping) the gradient norms before clipping, and a stop flag last
    n_log = config.log_every
    pending = torch.zeros(2 * n_log + 1, device=device)
    n_pending = 0

    def read_losses(i: int, stop_requested: bool) -> bool:
        """Read the pending losses (one host sync; one all-reduce under DDP); True when some process was signalled."""
        nonlocal n_pending
        pending[-1] = float(stop_requested)
        if world > 1:
            dist.all_reduce(pending)
            pending[:-1] /= world
        values = pending[:n_pending].tolist()
        norms = pending[n_log : n_log + n_pending].tolist() if config.grad_clip is not None else None
        stop = pending[-1].item() > 0
        first = i + 1 - n_pending
        for j, value in enumerate(values):
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"loss became {value} at step {first + j}: lower the learning rate (lr={config.lr}), "
                    "set warmup_steps or grad_clip in TrainConfig"
                )
        history.extend(values)
        n_pending = 0
        if rank == 0:
            bar.set_postfix(loss=f"{values[-1]:.4g}", refresh=False)  # shown at the bar's own refresh rate
            if callback is not None:
                info = {"i": i, "loss": sum(values) / len(values), "losses": values}
                if norms is not None:
                    info["grad_norm"] = sum(norms) / len(norms)
                callback(info)
        return stop

    model.train()
    bar_options = progress_options(config.progress and rank == 0)
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        _deferred_signals(path is not None) as signals,
        tqdm(range(len(history), config.n_steps), desc="fit", initial=len(history), total=config.n_steps, **bar_options) as bar,
    ):
        if module_rng is None:  # inside fork_rng: the run's own dropout stream, the caller's restored afterwards
            seed = _stream_seed(config.seed, rank, "module")
            module_rng = [torch.Generator().manual_seed(seed).get_state()]
            module_rng += [torch.Generator(device).manual_seed(seed).get_state()] if device.type == "cuda" else []
        _set_module_rng_state(module_rng, device)
        for i in bar:
            adapt_threads()
            if config.warmup_steps or config.lr_schedule != "constant":
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, i)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = loss_fn(train_model, next_batch(), noise_generator)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ValueError(
                    f"loss_fn must return a scalar tensor (the mean over the batch), got {shape}: "
                    "pass reduction='mean' to the loss, or reduce it with .mean()"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                pending[n_log + n_pending] = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            pending[n_pending] = loss.detach().float().reshape(())
            n_pending += 1
            checkpoint_due = path is not None and config.checkpoint_every and (i + 1) % config.checkpoint_every == 0
            # a single process stops at the next step boundary; several agree at the next read-out
            signalled = signals["signal"] is not None
            if n_pending == config.log_every or checkpoint_due or i + 1 == config.n_steps or (signalled and world == 1):
                stop = read_losses(i, signalled)
                if checkpoint_due or stop:
                    save()
                if stop:
                    stopped_by = signals["signal"] or signal.SIGTERM  # a rank that was not signalled follows the one that was
                    break
        else:
            stopped_by = None
            if path is not None:  # inside fork_rng: the checkpoint holds the run's dropout stream, not the caller's
                save()
    if stopped_by is not None:  # the handlers are restored: the signal now does what it would have done
        signal.raise_signal(stopped_by)
    model.eval()
    return history
