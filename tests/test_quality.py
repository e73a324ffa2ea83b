"""Image quality offline: the Frechet distance against closed forms, classifier-FID, and the commands that use it."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from scorelab import cli, datasets, metrics
from scorelab.nets import ImageClassifier
from scorelab.train import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _random_cov(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.2 * torch.eye(d, dtype=torch.float64)


def test_gaussian_frechet_matches_independent_formulas():
    # commuting (diagonal) covariances: ||m_a - m_b||^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64), torch.tensor([1.5, 0.3, 1.0], dtype=torch.float64)
    m_a, m_b = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64)
    expected = ((m_a - m_b) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert metrics.gaussian_frechet(m_a, torch.diag(a), m_b, torch.diag(b)) == pytest.approx(expected.item(), abs=1e-12)
    # general covariances: scipy's matrix square root of S_a S_b, as the usual FID code computes it
    S_a, S_b = _random_cov(5, 0), _random_cov(5, 1)
    m = torch.zeros(5, dtype=torch.float64)
    reference = np.trace(S_a.numpy() + S_b.numpy() - 2 * scipy.linalg.sqrtm(S_a.numpy() @ S_b.numpy()).real)
    assert metrics.gaussian_frechet(m, S_a, m, S_b) == pytest.approx(reference, abs=1e-9)
    assert metrics.gaussian_frechet(m, S_a, m, S_a) == pytest.approx(0.0, abs=1e-10)


def test_frechet_of_samples_converges_to_the_closed_form():
    """Two samples of one Gaussian: the estimate is the plug-in bias, which shrinks like 1/n (near 0). Two different
    Gaussians: over 40 seeds the estimate matches the closed form within 4 standard errors plus the mean term's exact
    bias E||m_a^ - m_b^||^2 - ||m_a - m_b||^2 = (tr S_a + tr S_b) / n."""
    d = 3
    S_a, S_b = _random_cov(d, 2), _random_cov(d, 3)
    m_a, m_b = torch.zeros(d, dtype=torch.float64), torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    L_a, L_b = torch.linalg.cholesky(S_a), torch.linalg.cholesky(S_b)

    def draw(m, L, n, seed):
        return m + torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ L.T

    same = {n: np.mean([metrics.frechet_distance(draw(m_a, L_a, n, s), draw(m_a, L_a, n, 100 + s)) for s in range(12)])
            for n in (2_000, 20_000)}  # fmt: skip
    assert same[20_000] < same[2_000] / 5  # ~1/n: expected ratio 10
    exact = metrics.gaussian_frechet(m_a, S_a, m_b, S_b)
    assert same[20_000] < 1e-3 * exact
    n = 20_000
    estimates = np.array([metrics.frechet_distance(draw(m_a, L_a, n, s), draw(m_b, L_b, n, 200 + s)) for s in range(40)])
    se = estimates.std(ddof=1) / math.sqrt(len(estimates))
    mean_bias = (S_a.trace() + S_b.trace()).item() / n
    assert abs(estimates.mean() - exact) < 4 * se + mean_bias, (estimates.mean(), exact, se)


def test_classifier_fid_of_a_set_with_itself_is_zero_and_grows_with_corruption():
    torch.manual_seed(0)
    classifier = ImageClassifier(channels=1, n_classes=4, width=8).eval()
    pixels, _ = datasets.shapes(400, 16, generator=0)
    real = datasets.to_model_range(pixels)
    same = metrics.classifier_fid(real, real, classifier, batch_size=64)
    assert same.fid == pytest.approx(0.0, abs=1e-8)
    np.testing.assert_allclose(same.class_histogram, same.real_class_histogram)
    with torch.no_grad():
        top = torch.softmax(classifier(real), 1).max(1).values.double()
    assert same.class_histogram.sum() == pytest.approx(1.0)
    assert same.mean_confidence == pytest.approx(top.mean().item(), rel=1e-6)
    assert same.confident_fraction == pytest.approx((top >= 0.9).double().mean().item())
    noisy = [metrics.classifier_fid(real, (real + s * torch.randn_like(real)).clamp(-1, 1), classifier).fid for s in (0.2, 1.0)]
    assert 0 < noisy[0] < noisy[1]
    with pytest.raises(TypeError, match="classifier"):
        metrics.classifier_fid(real, real, lambda x: x)


def test_classifier_command_reaches_its_accuracy_on_shapes_and_judges_a_run(tmp_path, capsys):
    """`scorelab classifier` on the procedural shapes: at least 95 % on the 1000 holdout shapes (lesson 09's classifier,
    the same architecture, reaches 98.8 %); then `scorelab train` logs classifier-FID of its EMA samples."""
    out = tmp_path / "judge"
    assert cli.main(["classifier", "--config", "shapes", "--out", str(out), "--device", "cpu"]) == 0
    model, meta = cli.load_classifier(out / "classifier.pt")
    assert meta["holdout_accuracy"] >= 0.95 and meta["classifier"]["n_classes"] == len(datasets.SHAPES)
    assert f"accuracy {meta['holdout_accuracy']:.4f}" in capsys.readouterr().out
    assert cli.main(["classifier", "--config", "shapes", "--out", str(out)]) == 2  # never silently replaced
    run = tmp_path / "run"
    args = ["train", "--config", "shapes-vp", "--out", str(run), "--steps", "4", "--batch-size", "4", "n_images=20",
            "unet=tiny", "holdout=32", "sample_steps=2", "n_samples=4", "sample_every=0", "progress=false", "log_every=1",
            f"classifier={out / 'classifier.pt'}", "fid_every=2", "fid_samples=8", "device=cpu"]  # fmt: skip
    assert cli.main(args) == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    fid = [r for r in records if "classifier_fid" in r]
    assert [r["step"] for r in fid] == [2, 4]
    assert all(r["classifier_fid"] > 0 and 0 <= r["confident_fraction"] <= 1 and len(r["class_histogram"]) == 4 for r in fid)
    assert fid[0]["train_seconds"] < fid[1]["train_seconds"]


def test_load_classifier_refuses_other_checkpoints(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--config", "shapes-vp", "--out", str(run), "--steps", "1", "--batch-size", "2", "n_images=8",
            "unet=tiny", "holdout=2", "sample_steps=2", "n_samples=2", "sample_every=0", "progress=false"]  # fmt: skip
    assert cli.main(args) == 0
    with pytest.raises(CheckpointError, match="scorelab classifier"):
        cli.load_classifier(run / "checkpoint.pt")


MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.mark.skipif(not (MNIST.is_dir() or (ROOT / ".gpu").is_dir()), reason="needs the MNIST test split in ../shared/data/mnist")
def test_gpu_run_rehearsal_runs_every_step_as_the_gpu_machine_would(tmp_path):
    """bench/gpu_run.sh is what a GPU session runs in its few minutes. `gpu_machine.py rehearse` runs it with tiny
    sizes on a copy of the GPU machine: only the files that travel (no ../shared, no .venv beside them), a python3
    that sees only the machine's packages (no diffusers, no scorelab), no network. Every step must pass (classifier,
    a training run stopped by SIGTERM, the evaluation and its figure, the diffusers comparison from the carried
    wheels, torchrun in a one-rank process group), within half the GPU run's 480 s budget, leaving at most 8 small
    files in $OUT, none a checkpoint."""
    r = tmp_path / "r"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_machine.py"), "rehearse", "--out", str(r)],
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    summary = json.loads((r / "rehearsal.json").read_text())
    timing = {k: summary[k] for k in ("seconds", "cpu_seconds", "load_average")}
    assert result.returncode == 0, f"{timing}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    # the rehearsal reproduces the machine: a build-isolated install fails there, for want of setuptools from an index
    assert summary["isolated_install_failed"] and "setuptools" in summary["isolated_install_error"]
    assert not (r / "shared").exists() and not (r / "tree" / ".venv").exists()
    out = r / "out"
    env = (out / "env.txt").read_text()
    assert "scorelab: pip install --no-index --no-deps --no-build-isolation -e ." in env
    assert f"scorelab from {r / 'tree' / 'scorelab'}" in env  # the copy that travelled, not this checkout
    assert f"from {r / 'work' / 'site' / 'diffusers'}" in env  # the carried wheel, not this environment's diffusers
    # the limits of what comes back, and the time budget scaled down (240 s of the GPU run's 480 s)
    assert summary["out_problems"] == [] and set(summary["out_files"]) == {
        "env.txt", "run.log", "train_log.jsonl", "image_eval.json", "image_eval.png", "images.txt", "ddp.txt"}  # fmt: skip
    # (about one CPU minute: 58 s for the script, 64-72 s for this whole test in four runs; the CPU budget keeps CI
    # fast. The wall clock budget holds unless other work leaves the rehearsal a fraction of the cores: load_average
    # says how much there was)
    assert summary["cpu_seconds"] <= 120, timing
    assert summary["seconds"] <= 240 and "all steps passed" in (out / "run.log").read_text(), timing
    assert "FAILED" not in env and "not run" not in env
    # each step's result
    evaluation = json.loads((out / "image_eval.json").read_text())
    assert evaluation["data"].startswith("mnist test split, 9000 trained on, 1000 held out")
    assert evaluation["fid_curve"] and len(evaluation["samplers_at_equal_nfe"]) == 3
    assert math.isfinite(evaluation["bits_per_dim"]["mean"]) and (out / "image_eval.png").stat().st_size > 10_000
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("classifier_fid" in rec for rec in records) and (r / "work" / "run" / "checkpoint.pt").is_file()
    assert "speed-up" in (out / "images.txt").read_text()
    ddp = (out / "ddp.txt").read_text()
    assert "process group: gloo, world 1, rank 0" in ddp and "DDP vs plain 0," in ddp and "world_size 1, 4 steps" in ddp
