"""The training loop: it learns, it resumes exactly, and its checkpoints are safe."""

import io
import math
import pickle
import sys

import pytest
import torch

from scorelab import EMA, CheckpointError, EnergyMLP, ScoreMLP, TrainConfig, fit, load_checkpoint, losses, save_checkpoint
from scorelab.datasets import ring_mixture
from scorelab.metrics import fisher_divergence
from scorelab.train import progress_options

MIX = ring_mixture(n_modes=3, radius=2.0, std=0.5)
SIGMA = 0.5  # a well-conditioned DSM problem: the loop, not the estimator, is under test


def dsm_loss(model, x, g):
    return losses.dsm(model, x, SIGMA, generator=g)


def new_model():
    torch.manual_seed(0)
    return ScoreMLP(2, hidden=32, n_layers=2)


def test_fit_learns_the_score():
    model = new_model()
    before = fisher_divergence(model, MIX.convolve(SIGMA), n=4000, generator=1)
    history = fit(model, dsm_loss, MIX.sample, TrainConfig(n_steps=600, lr=3e-3, progress=False))
    after = fisher_divergence(model, MIX.convolve(SIGMA), n=4000, generator=1)
    assert len(history) == 600
    assert after.value + 4 * after.se < before.value / 5


def test_fit_draws_minibatches_from_a_tensor():
    data = MIX.sample(500, generator=0)
    history = fit(new_model(), dsm_loss, data, TrainConfig(n_steps=20, batch_size=64, progress=False))
    assert len(history) == 20


def test_same_seed_same_run():
    runs = [fit(new_model(), dsm_loss, MIX.sample, TrainConfig(n_steps=30, progress=False)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    config = TrainConfig(n_steps=50, checkpoint_every=10, seed=3, progress=False)
    full_model, full_ema = new_model(), None
    full_ema = EMA(full_model, decay=0.9)
    full = fit(full_model, dsm_loss, MIX.sample, config, ema=full_ema)

    path = tmp_path / "run.pt"
    model = new_model()
    ema = EMA(model, decay=0.9)

    def interrupt(info):
        if info["i"] == 26:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, dsm_loss, MIX.sample, config, ema=ema, checkpoint=path, callback=interrupt)
    assert len(load_checkpoint(path)["history"]) == 20
    # a new process would rebuild everything from scratch, then resume from the file
    model, ema = new_model(), EMA(new_model(), decay=0.9)
    resumed = fit(model, dsm_loss, MIX.sample, config, ema=ema, checkpoint=path)
    assert resumed == full
    for a, b in zip(model.state_dict().values(), full_model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.module.state_dict().values(), full_ema.module.state_dict().values()):
        assert torch.equal(a, b)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "run.pt"
    fit(new_model(), dsm_loss, MIX.sample, TrainConfig(n_steps=5, progress=False), checkpoint=path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        fit(new_model(), dsm_loss, MIX.sample, TrainConfig(n_steps=10, progress=False), checkpoint=path)


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    save_checkpoint({"format": "scorelab-checkpoint-v1", "step": torch.tensor(1)}, path)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "scorelab-checkpoint-v1", "step": torch.tensor(2)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "scorelab-checkpoint-v1", "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="other than tensors"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_not_a_scorelab_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a scorelab checkpoint"):
        load_checkpoint(path)


def test_divergence_raises_with_a_hint():
    def exploding(model, x, g):
        return model(x).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="learning rate"):
        fit(new_model(), exploding, MIX.sample, TrainConfig(n_steps=3, progress=False))


def test_ema_tracks_the_average():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.module.weight.fill_(4.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(2.0)
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("n", [1, 10, 300])
def test_ema_warmup_forgets_the_initialisation_polynomially(n):
    """With warm-up the n-th update uses min(decay, (1 + n) / (10 + n)): after n updates towards a fixed model the
    initial weights keep the share prod_k (1 + k) / (10 + k) = 9! n! / (n + 9)!, not decay^n (0.97 at n = 300)."""
    model = torch.nn.Linear(1, 1, bias=False).double()
    ema = EMA(model, decay=0.9999)
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.module.weight.fill_(1.0)
    for _ in range(n):
        ema.update(model)
    share = math.exp(math.lgamma(10) + math.lgamma(n + 1) - math.lgamma(n + 10))
    assert ema.module.weight.item() == pytest.approx(share, rel=1e-12)
    assert ema.n_updates == n and ema.current_decay() == min(0.9999, (1 + n) / (10 + n))
    if n == 300:
        assert share < 1e-15 < 0.9999**n - 0.9


def test_resume_with_dropout_is_exact_and_leaves_the_callers_random_state(tmp_path):
    """Dropout draws from torch's own generator: fit seeds it for the run, checkpoints it, and restores the caller's."""

    def dropout_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Dropout(0.5), torch.nn.Linear(64, 2))

    def loss(model, x, g):
        return (model(x) - x).square().sum(1).mean()

    config = TrainConfig(n_steps=20, checkpoint_every=5, progress=False)
    full_model = dropout_model()
    torch.manual_seed(123)
    caller_state = torch.get_rng_state()
    full = fit(full_model, loss, MIX.sample, config)
    assert torch.equal(torch.get_rng_state(), caller_state)

    path = tmp_path / "run.pt"

    def interrupt(info):
        if info["i"] == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(dropout_model(), loss, MIX.sample, config, checkpoint=path, callback=interrupt)
    torch.manual_seed(999)  # whatever the new process's random state, the resumed run continues the stored one
    resumed_model = dropout_model()
    assert fit(resumed_model, loss, MIX.sample, config, checkpoint=path) == full
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.state_dict().values(), full_model.state_dict().values()))


def test_progress_bar_into_a_log_file_is_not_a_line_per_step(monkeypatch):
    """Into a file (not a terminal) the bar redraws every 30 s, not every 0.1 s; the environment's TQDM_* still win
    (tqdm reads them when imported, so the live bar is not run here: CI sets TQDM_DISABLE)."""
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # as when stderr goes to a log file
    assert progress_options(True) == {"mininterval": 30.0} and progress_options(False) == {"disable": True}
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress_options(True) == {}  # a terminal: tqdm's own redraw rate
    monkeypatch.setenv("TQDM_MININTERVAL", "60")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_options(True) == {}  # the user's setting wins


def test_energy_mlp_score_is_minus_grad_and_works_under_no_grad():
    torch.manual_seed(0)
    model = EnergyMLP(2, hidden=16, n_layers=2).double()
    x = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(model.score(x.detach()), -grad)
    with torch.no_grad():
        s = model.score(x.detach())
    assert not s.requires_grad
    torch.testing.assert_close(s, -grad)
    # a score-matching loss on the energy's score reaches its parameters (all but the output
    # bias, a constant energy shift that the score cannot see)
    losses.ism(model.score, x.detach()).backward()
    *weights, output_bias = model.parameters()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
    assert output_bias.grad is None
    # the EMA copy computes its own score, not the original's
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.zero_()
    assert torch.equal(ema.module.score(x.detach()), torch.zeros(8, 2, dtype=torch.float64))


def test_conditional_score_mlp():
    model = ScoreMLP(2, hidden=16, n_layers=2, n_fourier=4, log_condition=True, divide_by_sigma=True)
    x = torch.randn(5, 2)
    sigma = torch.full((5,), 2.0)
    out = model(x, sigma)
    assert out.shape == x.shape
    torch.testing.assert_close(out * 2.0, model.net(torch.cat([x, model.embed(sigma.log())], 1)))
    with pytest.raises(TypeError, match="conditional"):
        model(x)
    with pytest.raises(TypeError, match="unconditional"):
        ScoreMLP(2)(x, sigma)


@pytest.mark.slow
def test_twenty_sigkills_resume_bit_identical_and_leave_no_debris(tmp_path):
    """SIGKILL one run 20 times at random moments (many land inside checkpoint writes: one every 5 steps), resume it
    each time, and compare the end with an uninterrupted run: bit-identical, at most one checkpoint interval lost per
    kill, and no temporary file left."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    worker = Path(__file__).with_name("kill_worker.py")
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    n_steps, every = 1000, 5

    def start(path):
        return subprocess.Popen([sys.executable, str(worker), str(path), str(n_steps)], env=env, stdout=subprocess.PIPE, text=True)

    reference = tmp_path / "reference.pt"
    assert start(reference).wait() == 0
    path, rng, lost = tmp_path / "killed.pt", random.Random(0), []
    for _ in range(20):
        process = start(path)
        last = int(process.stdout.readline())  # training has begun
        target = last + rng.randrange(30)  # a random step within the next 30 (so 20 kills never finish the run) ...
        while last < target:
            last = int(process.stdout.readline())
        time.sleep(rng.uniform(0, 0.01))  # ... and a random moment within it, often inside a checkpoint write
        process.send_signal(signal.SIGKILL)
        for line in process.stdout:
            last = int(line)
        process.wait()
        saved = len(load_checkpoint(path)["history"]) if path.exists() else 0
        lost.append(last + 1 - saved)
    assert max(lost) <= every, f"steps lost per kill: {lost}"
    assert start(path).wait() == 0
    ours, theirs = load_checkpoint(path), load_checkpoint(reference)
    assert torch.equal(ours["history"], theirs["history"])
    for k, state in ours["optimizer"]["state"].items():
        assert all(torch.equal(v, theirs["optimizer"]["state"][k][name]) for name, v in state.items())
    assert all(torch.equal(a, b) for a, b in zip(ours["model"].values(), theirs["model"].values()))
    assert all(torch.equal(a, b) for a, b in zip(ours["ema"]["module"].values(), theirs["ema"]["module"].values()))
    assert not list(tmp_path.glob(".*.tmp-*")), "a temporary checkpoint file was left behind"
    print(f"\n20 SIGKILLs: steps lost per kill {sorted(lost)} (checkpoint every {every})")


def test_learning_rate_warms_up_then_follows_half_a_cosine_to_zero():
    from scorelab.train import learning_rate

    config = TrainConfig(n_steps=110, lr=0.2, warmup_steps=10, lr_schedule="cosine", progress=False)
    rates = [learning_rate(config, i) for i in range(110)]
    assert rates[0] == pytest.approx(0.02) and rates[9] == pytest.approx(0.2)  # linear warm-up to lr
    assert rates[10] == pytest.approx(0.2) and rates[60] == pytest.approx(0.1)  # cos(pi / 2) halfway
    assert rates[109] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    constant = TrainConfig(n_steps=110, lr=0.2, warmup_steps=10, progress=False)
    assert [learning_rate(constant, i) for i in (9, 60, 109)] == [pytest.approx(0.2)] * 3
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_fit_applies_the_cosine_schedule_to_the_optimiser():
    model = torch.nn.Linear(1, 1, bias=False)
    seen = []
    config = TrainConfig(n_steps=4, lr=0.1, lr_schedule="cosine", progress=False)

    def loss(m, x, g):
        return m(x).mean()

    # a step of Adam moves a weight by about its learning rate: the moves follow the schedule
    before = model.weight.item()
    fit(model, loss, torch.ones(4, 1), config, callback=lambda info: seen.append(model.weight.item()))
    moves = -torch.diff(torch.tensor([before, *seen])).numpy()
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert moves == pytest.approx(expected, rel=1e-3)
