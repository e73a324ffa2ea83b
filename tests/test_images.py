"""The image half: U-Net, image data, the same samplers and likelihood on images, the command line, DDP, crash safety."""

import gzip
import json
import math
import os
import pickle
import shlex
import signal
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from scorelab import TrainConfig, cli, datasets, fit, likelihood, load_checkpoint, sampling, viz
from scorelab.nets import UNET_PRESETS, UNet, UNetConfig
from scorelab.sde import VESDE, VPSDE, condition_on_std
from scorelab.train import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
TINY_RUN = [
    "unet=tiny",
    "holdout=2",
    "sample_steps=2",
    "n_samples=4",
    "sample_every=0",
    "checkpoint_every=1",
    "log_every=1",
    "progress=false",
]


# --- U-Net ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, shape",
    [("tiny", (3, 1, 16, 16)), ("tiny", (2, 1, 28, 28)), ("tiny", (2, 3, 8, 12)), ("tiny", (1, 2, 32, 32)), ("mnist", (2, 1, 28, 28))],
)
def test_unet_output_has_the_input_shape(preset, shape):
    torch.manual_seed(0)
    model = UNet(replace(UNET_PRESETS[preset], channels=shape[1]))
    x, sigma = torch.randn(shape), torch.rand(shape[0]) + 0.1
    with torch.no_grad():
        model.conv_out.bias.fill_(1.0)  # the last layer starts at zero; a constant output of 1 shows the scaling
        out = model(x, sigma)
    assert out.shape == x.shape
    # the score scale is built in: the network's output divided by sigma
    torch.testing.assert_close(out, (1 / sigma).reshape(-1, 1, 1, 1).expand_as(x))
    with torch.no_grad():
        torch.nn.init.normal_(model.conv_out.weight)
        out = model(x, sigma)
    assert torch.isfinite(out).all() and out.std() > 0


def test_cifar10_preset_is_ddpm_sized_and_runs():
    model = UNet("cifar10")
    n_parameters = sum(p.numel() for p in model.parameters())
    assert 34e6 < n_parameters < 37e6  # DDPM's CIFAR-10 model has 35.7 M
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32), torch.ones(1)).shape == (1, 3, 32, 32)
    assert sum(p.numel() for p in UNet("tiny").parameters()) < 0.5e6


def test_noise_embedding_passes_a_nonlinearity_before_each_projection():
    """DDPM's `dense(nonlinearity(temb))`: without it a block's projection composes linearly with the embedding MLP's
    last layer, so its shift would be affine in that layer's output (bench/unet_ablation.py measures the difference)."""
    from scorelab.nets import ResBlock

    emb = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    for activation in (True, False):
        block = ResBlock(4, 4, 8, 0.0, embedding_activation=activation)
        with torch.no_grad():
            once, twice = (block.emb(block.emb_activation(e)) - block.emb.bias for e in (emb, 2 * emb))
        assert torch.allclose(twice, 2 * once) is not activation
    assert UNET_PRESETS["tiny"].embedding_activation


def test_unet_dtypes_and_bad_input():
    model = UNet("tiny")
    x64 = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    out = model(x64, torch.ones(2, dtype=torch.float64))
    assert out.dtype == torch.float64  # cast in and back, like ScoreMLP
    torch.testing.assert_close(out, model(x64.float(), torch.ones(2)).double())
    with pytest.raises(TypeError, match="to_model_range"):
        model(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), torch.ones(2))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(2, 1, 18, 18), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(n, 1, H, W\)"):
        model(torch.randn(2, 3, 16, 16), torch.ones(2))
    with pytest.raises(ValueError, match="sigma"):
        model(torch.randn(2, 1, 16, 16), torch.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="attention_levels"):
        UNetConfig(attention_levels=(5,))
    with pytest.raises(ValueError, match="config"):
        UNet("huge")


# --- the same samplers and likelihood on images, against a Gaussian's closed form -----------------------------

STD = 0.5  # data N(0, STD^2 I) on 1x8x8 images


def gaussian_image_score(sde):
    """The exact score of p_t when x_0 ~ N(0, STD^2 I): -x / (m(t)^2 STD^2 + sigma(t)^2)."""

    def score(x, t):
        m, s = sde.marginal_coeffs(t)
        var = (m**2 * STD**2 + s**2).to(x.dtype)
        return -x / var.reshape(-1, *([1] * (x.ndim - 1)))

    return score


def gaussian_log_prob(x, var):
    flat = x.reshape(len(x), -1)
    return -0.5 * (flat**2).sum(1) / var - 0.5 * flat.shape[1] * math.log(2 * math.pi * var)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 10.0)], ids=repr)
def test_pc_and_ode_sample_images_with_the_exact_score(sde):
    score = gaussian_image_score(sde)
    x_T = sde.prior_sample((200, 1, 8, 8), generator=0, dtype=torch.float64)
    n_values = x_T.numel()
    se = STD**2 * math.sqrt(2 / n_values)  # standard error of a variance estimate from n_values normal values
    pc = sampling.pc_sample(score, sde, x_T, 500, generator=1)
    ode = sampling.ode_sample(score, sde, x_T, rtol=1e-6, atol=1e-6)
    for samples in (pc, ode):
        assert samples.shape == x_T.shape
        assert abs(samples.var().item() - STD**2) < 4 * se


def test_log_prob_and_bits_per_dim_of_images_match_the_closed_form():
    sde = VPSDE()
    score = gaussian_image_score(sde)
    eps = 1e-5
    m, s = (c.item() for c in sde.marginal_coeffs(eps))
    var_eps = m**2 * STD**2 + s**2
    x = STD * torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alpha_bar_T = math.exp(-sde.integrated_beta(sde.T).item())
    exact_prior = lambda y: gaussian_log_prob(y, alpha_bar_T * STD**2 + 1 - alpha_bar_T)
    torch.testing.assert_close(
        likelihood.log_prob(score, sde, x, eps=eps, rtol=1e-7, atol=1e-7, prior_log_prob=exact_prior),
        gaussian_log_prob(x, var_eps),
        atol=1e-3,
        rtol=0,
    )
    # bits/dim: the same dequantised x, then the closed form through the change of variables
    pixels = torch.randint(100, 156, (3, 1, 4, 4))
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        bpd = likelihood.bits_per_dim(score, sde, pixels, generator=5, eps=eps, rtol=1e-7, atol=1e-7, prior_log_prob=exact_prior)
        y = datasets.to_model_range(pixels, dequantize=True, generator=5)
    finally:
        torch.set_default_dtype(old)
    D = 16
    expected = -(gaussian_log_prob(y, var_eps) + D * math.log(2) - D * math.log(256)) / (D * math.log(2))
    torch.testing.assert_close(bpd, expected, atol=1e-4, rtol=0)


def test_unet_runs_through_every_sampler_and_the_likelihood():
    torch.manual_seed(0)
    model, sde = UNet(replace(UNET_PRESETS["tiny"], base_channels=8)).eval(), VPSDE()
    score = condition_on_std(model, sde)
    x_T = sde.prior_sample((2, 1, 8, 8), generator=0)
    for out in (
        sampling.pc_sample(score, sde, x_T, 3, generator=1),
        sampling.pc_sample(score, sde, x_T, 3, predictor="ancestral", corrector=None, generator=1),
        sampling.ode_sample(score, sde, x_T, method="euler", n_steps=3),
        likelihood.log_prob(score, sde, x_T, divergence="hutchinson", method="euler", n_steps=2, generator=2),
        likelihood.bits_per_dim(score, sde, torch.randint(0, 256, (2, 1, 8, 8)), divergence="hutchinson", method="euler", n_steps=2),
    ):
        assert torch.isfinite(out).all()


def test_pc_inpainting_keeps_the_known_half_and_samples_the_rest_exactly():
    # x ~ N(0, STD^2 I) has independent pixels, so the unknown half given the known half is N(0, STD^2) again
    sde = VPSDE()
    known = STD * torch.randn(300, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[:, :, :2] = True
    x_T = sde.prior_sample(known.shape, generator=1, dtype=torch.float64)
    out = sampling.pc_sample(gaussian_image_score(sde), sde, x_T, 300, mask=mask, known=known, generator=2)
    assert torch.equal(out[mask], known[mask])
    unknown = out[~mask]
    se = STD**2 * math.sqrt(2 / unknown.numel())
    assert abs(unknown.var().item() - STD**2) < 4 * se
    with pytest.raises(ValueError, match="mask and known"):
        sampling.pc_sample(gaussian_image_score(sde), sde, x_T, 3, mask=mask)
    with pytest.raises(ValueError, match="known must broadcast"):
        sampling.pc_sample(gaussian_image_score(sde), sde, x_T, 3, mask=mask, known=known[:, :, :2])


# --- image data -------------------------------------------------------------------------------------------------


def test_shapes_follow_their_class_weights_and_are_reproducible():
    weights = torch.tensor([0.4, 0.4, 0.1, 0.1])
    pixels, labels = datasets.shapes(4000, 16, weights=weights, generator=0)
    assert pixels.shape == (4000, 1, 16, 16) and pixels.dtype == torch.uint8 and labels.dtype == torch.int64
    counts = torch.bincount(labels, minlength=4).double()
    se = (4000 * weights * (1 - weights)).sqrt()
    assert ((counts - 4000 * weights).abs() < 4 * se).all()
    again, _ = datasets.shapes(4000, 16, weights=weights, generator=0)
    assert torch.equal(pixels, again)
    # every image shows its shape: lit pixels, inside the frame, none on the border rows
    lit = (pixels > 127).flatten(1).sum(1)
    assert (lit > 5).all() and (pixels[:, :, 0].amax() < 128) and (pixels[:, :, -1].amax() < 128)
    # blobs (squares, disks) cover more of the image than thin concentric rings
    mean_lit = torch.stack([lit[labels == k].double().mean() for k in range(4)])
    assert mean_lit[3] < mean_lit[1]


def test_model_range_round_trip_and_dequantisation():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = datasets.to_model_range(pixels)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(datasets.to_pixels(x), pixels)
    y = datasets.to_model_range(pixels, dequantize=True, generator=0)
    # each level spread over its own bin of width 2/256
    lo = -1 + 2 * pixels.float() / 256
    assert ((y >= lo) & (y < lo + 2 / 256)).all()
    with pytest.raises(TypeError, match="images"):
        datasets.to_model_range(torch.rand(2, 2))
    with pytest.raises(ValueError, match="images must hold values"):
        datasets.to_model_range(torch.full((2, 2), 300))


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def fake_mnist(folder: Path, n: int = 12, compress: bool = True, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    folder.mkdir(parents=True, exist_ok=True)
    image_file, label_file = datasets.IDX_FILES[split]
    write_idx(folder / image_file, images, compress)
    write_idx(folder / label_file, labels, compress)
    return images, labels


def fake_cifar10(folder: Path, n: int = 6) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    batches = []
    for name in datasets.CIFAR10_FILES["train"] + datasets.CIFAR10_FILES["test"]:
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": b"fake"}, f)
        batches.append(data)
    return batches


@pytest.mark.parametrize("compress", [True, False])
def test_idx_parser(tmp_path, compress):
    images, labels = fake_mnist(tmp_path / "raw", compress=compress)  # torchvision's layout: root/raw
    pixels, read_labels = datasets.load_idx_images("fashion_mnist", tmp_path)
    assert pixels.shape == (12, 1, 28, 28) and pixels.dtype == torch.uint8
    assert np.array_equal(pixels[:, 0].numpy(), images) and np.array_equal(read_labels.numpy(), labels)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.*download=True"):
        datasets.load_idx_images("mnist", tmp_path, "test")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 5, 28, 28) + b"\0" * 10)
    (bad / "train-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="truncated"):
        datasets.load_idx_images("mnist", bad)


def test_cifar10_parser_reads_batches_and_refuses_code(tmp_path):
    batches = fake_cifar10(tmp_path / "cifar-10-batches-py")
    pixels, labels = datasets.load_cifar10(tmp_path)
    assert pixels.shape == (30, 3, 32, 32) and labels.shape == (30,)
    assert np.array_equal(pixels[:6].reshape(6, -1).numpy(), batches[0])
    assert datasets.load_cifar10(tmp_path, "test")[0].shape == (6, 3, 32, 32)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing posix.system|refusing nt.system|refusing os.system"):
        datasets.load_cifar10(tmp_path, "test")


@pytest.mark.skipif(not MNIST.is_dir(), reason="the real MNIST test split (../shared/data/mnist) is not on this machine")
def test_real_mnist_test_split_loads():
    pixels, labels = datasets.load_idx_images("mnist", MNIST, "test")
    assert pixels.shape == (10_000, 1, 28, 28) and pixels.dtype == torch.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the canonical first test digits
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_image_grid_tiles_in_rows():
    images = torch.stack([torch.full((1, 4, 4), float(k)) for k in range(5)])
    grid = viz.image_grid(images.to(torch.uint8), n_cols=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1)
    assert grid[1, 1] == 0 and grid[1, 6] == 1 and grid[6, 6] == 4 and grid[0, 0] == 128
    with pytest.raises(ValueError, match="images"):
        viz.image_grid(torch.zeros(0, 1, 4, 4))


# --- the training loop's image features --------------------------------------------------------------------------


def test_warmup_scales_the_first_steps_learning_rate():
    # Adam's first step moves a parameter by exactly its learning rate (g / |g|), whatever the gradient
    moved = {}
    for warmup in (0, 10):
        model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(model.weight)
        fit(model, lambda m, x, g: m(x).mean(), torch.ones(4, 1), TrainConfig(n_steps=1, lr=0.1, warmup_steps=warmup, progress=False))
        moved[warmup] = -model.weight.item()
    assert moved[0] == pytest.approx(0.1) and moved[10] == pytest.approx(0.01)


def test_reading_losses_every_n_steps_changes_nothing_but_the_callbacks():
    from scorelab import ScoreMLP, losses
    from scorelab.datasets import ring_mixture

    mix, calls, runs = ring_mixture(3), [], []
    for every in (1, 7):
        torch.manual_seed(0)
        model = ScoreMLP(2, hidden=16, n_layers=2)
        config = TrainConfig(n_steps=20, log_every=every, progress=False)
        runs.append(fit(model, lambda m, x, g: losses.dsm(m, x, 0.5, generator=g), mix.sample, config, callback=calls.append))
    assert runs[0] == runs[1]
    assert [c["i"] for c in calls[20:]] == [6, 13, 19]
    assert calls[-1]["losses"] == runs[1][14:] and calls[-1]["loss"] == pytest.approx(sum(runs[1][14:]) / 6)


def test_gpu_only_options_on_a_cpu_machine_are_clear_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no CUDA device"):
        fit(model, lambda m, x, g: m(x).mean(), torch.ones(4, 2), TrainConfig(n_steps=1, device="cuda", progress=False))
    with pytest.raises(ValueError, match="bf16.*GPU"):
        fit(model, lambda m, x, g: m(x).mean(), torch.ones(4, 2), TrainConfig(n_steps=1, precision="bf16", progress=False))
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="gpu0")


def test_signal_checkpoints_then_interrupts(tmp_path):
    loss, path = (lambda m, x, g: m(x).pow(2).mean()), tmp_path / "run.pt"

    def send_sigint(info):
        if info["i"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    def run(n_steps=50):
        return fit(
            torch.nn.Linear(2, 2),
            loss,
            torch.ones(4, 2),
            TrainConfig(n_steps=n_steps, progress=False),
            checkpoint=path,
            callback=send_sigint,
        )

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own handler, whatever we inherited
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
        assert len(load_checkpoint(path)["history"]) == 6  # the step under way finished, then the checkpoint, then the interrupt
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        # a SIGINT this process ignores (a shell gives background jobs SIGINT ignored) stays ignored
        path.unlink()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert len(run(n_steps=10)) == 10
    finally:
        signal.signal(signal.SIGINT, previous)


def test_architecture_mismatch_and_stale_temporaries(tmp_path):
    path = tmp_path / "run.pt"
    stale = tmp_path / ".run.pt.tmp-99999"
    stale.write_bytes(b"half a checkpoint")
    loss = lambda m, x, g: m(x).pow(2).mean()
    fit(torch.nn.Linear(2, 2), loss, torch.ones(4, 2), TrainConfig(n_steps=2, progress=False), checkpoint=path)
    assert not stale.exists()
    with pytest.raises(CheckpointError, match=r"another architecture.*weight: \(2, 2\) in the file, \(3, 2\) here"):
        fit(torch.nn.Linear(2, 3), loss, torch.ones(4, 2), TrainConfig(n_steps=4, progress=False), checkpoint=path)
    with pytest.raises(ValueError, match="folder"):
        fit(torch.nn.Linear(2, 2), loss, torch.ones(4, 2), TrainConfig(n_steps=1, progress=False), checkpoint=tmp_path)


# --- the command line -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", sorted(cli.CONFIGS))
def test_every_config_trains_a_few_steps_through_the_cli(config, tmp_path, capsys):
    data = tmp_path / "data"
    if config.startswith("mnist"):
        fake_mnist(data, split=cli.CONFIGS[config].split)
    elif config.startswith("cifar10"):
        fake_cifar10(data)
    extra = ["n_images=40", "image_size=16"] if config.startswith("shapes") else ["--data", str(data)]
    out = tmp_path / "run"
    argv = ["train", "--config", config, "--out", str(out), "--steps", "2", "--batch-size", "4", *extra, *TINY_RUN]
    assert cli.main(argv) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert len(state["history"]) == 2 and state["metadata"]["run"]["sde"] == cli.CONFIGS[config].sde
    assert (out / "samples" / "step_0000002.png").is_file()
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    sampled = tmp_path / "grid.png"
    assert cli.main(["sample", "--ckpt", str(out / "checkpoint.pt"), "--steps", "2", "--n", "4", "--out", str(sampled)]) == 0
    assert sampled.is_file()


def documented_commands() -> dict[str, list[list[str]]]:
    """The `scorelab` and `torchrun` lines of the README's image section and of `cli`'s docstring, in order."""
    readme = (ROOT / "README.md").read_text().split("## Train on images", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    docstring = cli.__doc__.split("Every option", 1)[0]
    blocks = {}
    for name, text in (("README", readme), ("cli.py", docstring)):
        lines = [line.split(" #", 1)[0].strip() for line in text.splitlines()]
        blocks[name] = [shlex.split(line) for line in lines if line.startswith(("scorelab ", "torchrun "))]
    return blocks


def shrunk(argv: list[str], data: dict[str, str]) -> list[str]:
    """A documented command with tiny sizes: the same command and options, only fewer steps and images (and a run's
    guide, for `sample --guide`, kept at step 1 of its 2)."""
    argv = argv[argv.index("scorelab") + 1 :] if argv[0] == "torchrun" else argv[1:]  # torchrun: its own test below
    argv = [data.get(a, a) for a in argv]
    for flag in ("--steps", "--n", "--batch-size"):
        if flag in argv:
            i = argv.index(flag)
            if flag != "--n" or int(argv[i + 1]) > 64:
                del argv[i : i + 2]
    if argv[0] == "train":
        steps = "3" if "--resume" in argv else "2"
        extra = (["n_images=40"] if "shapes-vp" in argv else []) + (["guide_step=1"] if "mnist-cpu" in argv else [])
        return [*argv, "--steps", steps, "--batch-size", "4", *TINY_RUN, *extra]
    if argv[0] == "classifier":
        return [*argv, "--steps", "2", "--batch-size", "4"]
    return [*argv, "--n", "10", "--batch-size", "4"] if "--n" not in argv else argv


@pytest.mark.parametrize("source", ["README", "cli.py"])
def test_every_documented_command_runs_as_written(source, tmp_path, monkeypatch, capsys):
    """Each command a user reads, in order, with its defaults (no --steps for sampling), only smaller."""
    for split in ("train", "test"):  # the classifier preset holds out 1000 images
        fake_mnist(tmp_path / "mnist", n=1010, split=split)
    fake_cifar10(tmp_path / "cifar10")
    data = {"~/data/mnist": str(tmp_path / "mnist"), "~/data/cifar10": str(tmp_path / "cifar10")}
    monkeypatch.chdir(tmp_path)
    commands = documented_commands()[source]
    assert any(c[1] == "sample" and "--steps" not in c for c in commands)
    for argv in commands:
        argv = shrunk(argv, data)
        assert cli.main(argv) == 0, (argv, capsys.readouterr().err)
        if argv[0] == "sample":
            out = Path(argv[argv.index("--out") + 1] if "--out" in argv else "samples.png")  # the default
            assert out.is_file() and matplotlib.image.imread(out).std() > 0, argv
        if "--npz" in argv:
            images = np.load(argv[argv.index("--npz") + 1])["images"]
            assert images.shape == (10, 1, 28, 28) and images.dtype == np.uint8


def test_cli_sample_ode_and_inpaint(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli.main(["train", "--config", "shapes-ve", "--out", str(out), "--steps", "2", "--batch-size", "4", "n_images=20", *TINY_RUN]) == 0
    )
    ckpt = str(out / "checkpoint.pt")
    assert cli.main(["sample", "--ckpt", ckpt, "--sampler", "ode", "--n", "3", "--out", str(tmp_path / "ode.png")]) == 0
    assert "score evaluations" in capsys.readouterr().out
    assert cli.main(["sample", "--ckpt", ckpt, "--inpaint", "--steps", "2", "--n", "2", "--out", str(tmp_path / "fill.png")]) == 0
    grid = matplotlib.image.imread(tmp_path / "fill.png")
    assert grid.shape[0] > grid.shape[1]  # three rows (known, inpainted, original) of two


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    def error(argv):
        assert cli.main(argv) == 2
        return capsys.readouterr().err

    message = error(["train", "--config", "mnist-vp", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")])
    assert "train-images-idx3-ubyte" in message and "download=True" in message
    assert "pass --data" in error(["train", "--config", "cifar10-ve", "--out", str(tmp_path / "a")])
    assert "unknown setting 'lr_max'" in error(["train", "--config", "shapes-vp", "lr_max=1"])
    assert "lr must be a float" in error(["train", "--config", "shapes-vp", "lr=fast"])
    assert "sde must be one of" in error(["train", "--config", "shapes-vp", "sde=vpp"])
    out = tmp_path / "run"
    assert (
        cli.main(["train", "--config", "shapes-vp", "--out", str(out), "--steps", "1", "--batch-size", "2", "n_images=8", *TINY_RUN]) == 0
    )
    assert "pass --resume" in error(["train", "--config", "shapes-vp", "--out", str(out), "--steps", "2", *TINY_RUN])
    message = error(
        ["train", "--config", "shapes-ve", "--out", str(out), "--steps", "2", "--batch-size", "2", "n_images=8", "--resume", *TINY_RUN]
    )
    assert "started with --config shapes-vp, not shapes-ve" in message
    message = error(["train", "--out", str(out), "--resume", "sde=ve", "lr=1e-3"])
    assert "cannot change" in message and "sde: 'vp' in the checkpoint, 've' now" in message and "train.lr" in message
    assert "pass --config" in error(["train", "--out", str(tmp_path / "new")])
    assert "--config must be one of" in error(["train", "--config", "shapes", "--out", str(tmp_path / "new")])
    assert "no such file" in error(["train", "--config", str(tmp_path / "none.json"), "--out", str(tmp_path / "new")])
    assert "pass --out" in error(["train", "--config", str(out / "config.json")])
    torch.save({"format": "scorelab-checkpoint-v1", "model": {}}, tmp_path / "other.pt")
    assert "not written by `scorelab train`" in error(["sample", "--ckpt", str(tmp_path / "other.pt")])


def test_resume_takes_the_stored_settings_and_keeps_the_clock(tmp_path, capsys):
    """--resume needs no override again (only what may change), the training clock and the log continue from the
    checkpoint (records of steps after it are dropped), and a saved config.json starts a new run the same."""
    out = tmp_path / "run"
    first = ["train", "--config", "shapes-vp", "--out", str(out), "--steps", "4", "--batch-size", "2", "n_images=8", *TINY_RUN]
    assert cli.main([*first, "checkpoint_every=2"]) == 0
    with open(out / "log.jsonl", "a") as f:  # as if the run had been killed after logging step 5, before its checkpoint
        f.write(json.dumps({"step": 5, "loss": 0.0, "train_seconds": 1e9}) + "\n")
    stored = load_checkpoint(out / "checkpoint.pt")
    clock = stored["metadata"]["train_seconds"]
    assert clock > 0 and stored["metadata"]["preset"] == "shapes-vp"
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "6"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    seconds = [r["train_seconds"] for r in records]
    assert seconds == sorted(seconds) and seconds[3] == pytest.approx(clock) and seconds[-1] < 1e9
    resumed = load_checkpoint(out / "checkpoint.pt")
    assert len(resumed["history"]) == 6 and resumed["metadata"]["run"]["train"]["batch_size"] == 2
    # a new run from the saved settings trains exactly as the first did
    again = tmp_path / "again"
    assert cli.main(["train", "--config", str(out / "config.json"), "--out", str(again), "--steps", "4", "checkpoint_every=2"]) == 0
    assert load_checkpoint(again / "checkpoint.pt")["history"].tolist() == resumed["history"][:4].tolist()


def test_holdout_zero_trains_on_the_whole_split(tmp_path, capsys):
    fake_mnist(tmp_path / "mnist", n=6)
    out = tmp_path / "run"
    argv = ["train", "--config", "mnist-vp", "--data", str(tmp_path / "mnist"), "--out", str(out), "--steps", "1", *TINY_RUN]
    assert cli.main([*argv, "holdout=0"]) == 0
    assert cli.main(["sample", "--ckpt", str(out / "checkpoint.pt"), "--inpaint", "--out", str(tmp_path / "f.png")]) == 2
    assert "holdout=0" in capsys.readouterr().err


def test_sampling_in_batches_is_reproducible(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli.main(["train", "--config", "shapes-vp", "--out", str(out), "--steps", "1", "--batch-size", "2", "n_images=8", *TINY_RUN]) == 0
    )
    ckpt = str(out / "checkpoint.pt")

    def sample(name, *extra):
        argv = ["sample", "--ckpt", ckpt, "--n", "5", "--batch-size", "2", "--out", str(tmp_path / f"{name}.png")]
        assert cli.main([*argv, "--npz", str(tmp_path / f"{name}.npz"), *extra]) == 0
        return np.load(tmp_path / f"{name}.npz")["images"]

    a, b, c = sample("a"), sample("b"), sample("c", "--seed", "1")
    assert a.shape == (5, 1, 16, 16) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({a[i].tobytes() for i in range(5)}) == 5  # every batch has its own noise
    assert "5 samples (pc), the first 5" in capsys.readouterr().out


def test_guide_step_keeps_the_earlier_ema_and_sample_guides_with_it(tmp_path, capsys):
    """guide.pt holds the EMA weights of step guide_step (the same as a run stopped there); `sample --guide` with
    weight 1 gives exactly the unguided images, with weight 2 others; bad combinations are one clear line."""
    run = ["train", "--config", "shapes-vp", "--batch-size", "2", "n_images=8", "log_every=1", *TINY_RUN]
    assert cli.main([*run, "--out", str(tmp_path / "run"), "--steps", "4", "guide_step=2"]) == 0
    assert "guide for `scorelab sample --guide`" in capsys.readouterr().out
    assert cli.main([*run, "--out", str(tmp_path / "short"), "--steps", "2"]) == 0
    guide = load_checkpoint(tmp_path / "run" / "guide.pt")
    short, final = load_checkpoint(tmp_path / "short" / "checkpoint.pt"), load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert guide["metadata"]["step"] == 2 and guide["ema"]["n_updates"] == 2
    for key, value in short["ema"]["module"].items():
        torch.testing.assert_close(guide["ema"]["module"][key], value, rtol=0, atol=0)
    assert any(not torch.equal(guide["ema"]["module"][k], v) for k, v in final["ema"]["module"].items())
    ckpt, guide_path = str(tmp_path / "run" / "checkpoint.pt"), str(tmp_path / "run" / "guide.pt")

    def sample(name, *extra):
        argv = ["sample", "--ckpt", ckpt, "--n", "3", "--steps", "3", "--out", str(tmp_path / f"{name}.png")]
        assert cli.main([*argv, "--npz", str(tmp_path / f"{name}.npz"), *extra]) == 0, capsys.readouterr().err
        return np.load(tmp_path / f"{name}.npz")["images"]

    plain, one, two = sample("plain"), sample("one", "--guide", guide_path, "--guidance", "1"), sample("two", "--guide", guide_path)
    assert np.array_equal(plain, one) and not np.array_equal(plain, two)
    assert cli.main(["sample", "--ckpt", ckpt, "--guidance", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "pass --guide" in capsys.readouterr().err
    assert cli.main(["sample", "--ckpt", ckpt, "--guide", guide_path, "--guidance", "-1", "--out", str(tmp_path / "x.png")]) == 2
    assert "--guidance must be" in capsys.readouterr().err
    assert cli.main([*run, "--out", str(tmp_path / "none"), "--steps", "1", "guide_step=5"]) == 0
    assert "no guide.pt: no read-out of this run reached guide_step 5" in capsys.readouterr().out
    other = tmp_path / "ve"  # a guide of another SDE gives scores of another process: refused
    assert cli.main(["train", "--config", "shapes-ve", "--out", str(other), "--steps", "2", "--batch-size", "2", "n_images=8",
                     "guide_step=1", *TINY_RUN]) == 0  # fmt: skip
    assert cli.main(["sample", "--ckpt", ckpt, "--guide", str(other / "guide.pt"), "--out", str(tmp_path / "x.png")]) == 2
    assert "another SDE" in capsys.readouterr().err


def test_random_flips_mirror_half_the_batch():
    images = torch.arange(4.0).expand(1000, 1, 2, 4).clone()  # each row reads 0 1 2 3
    batch = cli._flipped_batches(images)(1000, torch.Generator().manual_seed(0))
    flipped = (batch[:, 0, 0, 0] == 3).float().mean().item()
    assert abs(flipped - 0.5) < 4 * 0.5 / math.sqrt(1000)  # a fair coin, within 4 standard errors
    assert torch.equal(batch[batch[:, 0, 0, 0] == 3], images[:1].flip(-1).expand(int(flipped * 1000), 1, 2, 4))
    assert cli.CONFIGS["cifar10-vp"].random_flip and not cli.CONFIGS["mnist-vp"].random_flip


def test_image_runs_clip_a_per_pixel_loss_and_log_its_norm(tmp_path, capsys):
    """DDPM's convention: the loss is a mean over pixels, so grad_clip=1.0 acts on outliers; the log shows the norm."""
    fake_mnist(tmp_path / "mnist", n=12)
    out = tmp_path / "run"
    argv = ["train", "--config", "mnist-vp", "--data", str(tmp_path / "mnist"), "--out", str(out), "--steps", "3", *TINY_RUN]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(0 < r["grad_norm"] for r in records) and all(r["loss"] < 5 for r in records)  # per pixel, O(1)


def test_sigma_max_below_the_data_spread_is_flagged(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", "shapes-ve", "--out", str(out), "--steps", "1", "--batch-size", "2", "n_images=8", *TINY_RUN]
    assert cli.main([*argv, "sigma_max=1.0"]) == 0
    assert "sigma_max=1.0 is below" in capsys.readouterr().err
    assert cli.main([*argv[:4], str(tmp_path / "other"), *argv[5:]]) == 0
    assert "sigma_max" not in capsys.readouterr().err


def test_download_flag_reaches_the_loader(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on a machine without it: a clear error, not a traceback
    argv = ["train", "--config", "mnist-vp", "--data", str(tmp_path / "new"), "--out", str(tmp_path / "run"), "--download"]
    assert cli.main(argv) == 2
    assert "download=True needs torchvision" in capsys.readouterr().err


def test_python_dash_m_scorelab_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "scorelab", "train", "--help"], capture_output=True, text=True, check=True)
    assert "--config" in result.stdout and "shapes-vp" in result.stdout


# --- several processes, and crashes ---------------------------------------------------------------------------------


def _torchrun(*args) -> None:
    """`torchrun --standalone --nproc_per_node=2 ARGS` with quiet progress bars; fails with the processes' output."""
    # faulthandler: should a process abort (SIGABRT from C++), its Python stack is printed with the output below
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_process_ddp_averages_gradients_and_resumes(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import ddp_worker

    _torchrun(Path(ddp_worker.__file__), tmp_path)
    results = torch.load(tmp_path / "result.pt", weights_only=True)
    # one process on the concatenated batch (2 x 8): the same steps up to float round-off
    model = ddp_worker.new_model()
    config = TrainConfig(n_steps=4, batch_size=2 * ddp_worker.BATCH, lr=1e-2, progress=False)
    history = fit(model, ddp_worker.regression_loss, ddp_worker.data(), config)
    ddp_history, ddp_state = results["deterministic"]
    torch.testing.assert_close(torch.tensor(ddp_history), torch.tensor(history), rtol=1e-5, atol=1e-6)
    for a, b in zip(ddp_state.values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a resumed two-process run (per-rank noise generators restored) ends bit-identical to an uninterrupted one
    assert results["resumed"][0] == results["straight"][0]
    assert all(torch.equal(a, b) for a, b in zip(results["resumed"][1].values(), results["straight"][1].values()))
    # dropout and loss noise: each rank draws its own, and a resumed run continues each rank's streams exactly
    (mask_0, noise_0), (mask_1, noise_1) = results["dropout_masks"]
    assert not torch.equal(mask_0, mask_1) and not torch.equal(noise_0, noise_1)
    assert results["dropout_resumed"][0] == results["dropout_straight"][0]
    assert all(torch.equal(a, b) for a, b in zip(results["dropout_resumed"][1].values(), results["dropout_straight"][1].values()))


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_bit_identical(tmp_path):
    """SIGKILL a `scorelab train` at a random moment (perhaps inside a checkpoint write), resume it, and compare."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    argv = ["--config", "shapes-vp", "--steps", "30", "--batch-size", "8", "n_images=64", *TINY_RUN, "checkpoint_every=3"]
    train = [sys.executable, "-m", "scorelab", "train"]
    subprocess.run([*train, *argv, "--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)
    reference = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")

    killed = tmp_path / "killed"
    process = subprocess.Popen([*train, *argv, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(float(np.random.default_rng(0).uniform(0, 0.5)))
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = len(load_checkpoint(killed / "checkpoint.pt")["history"])
    assert 3 <= saved < 30, "the kill should land mid-run"
    subprocess.run([*train, *argv, "--out", str(killed), "--resume"], check=True, env=env, capture_output=True)
    resumed = load_checkpoint(killed / "checkpoint.pt")
    assert torch.equal(resumed["history"], reference["history"])
    for part in ("model", "ema"):
        ours, theirs = resumed[part], reference[part]
        ours, theirs = (ours["module"], theirs["module"]) if part == "ema" else (ours, theirs)
        assert all(torch.equal(a, b) for a, b in zip(ours.values(), theirs.values()))
    assert not list(killed.glob(".checkpoint.pt.tmp-*"))  # no debris from a write the kill interrupted


def test_torchrun_runs_the_cli_unchanged(tmp_path):
    """`torchrun --nproc_per_node=2 -m scorelab train ...`: two gloo processes, one checkpoint and log from rank 0."""
    out = tmp_path / "run"
    argv = ["-m", "scorelab", "train", "--config", "shapes-vp", "--out", out, "--steps", "2", "--batch-size", "2", "n_images=16"]
    _torchrun(*argv, *TINY_RUN)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["history"]) == 2 and len(state["rank_generators"]) == 2
    assert len((out / "log.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes the log


def test_fit_trains_where_the_model_is_unless_told(monkeypatch):
    # on a GPU machine a lesson's CPU model must stay on the CPU (its later calls pass CPU tensors)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = torch.nn.Linear(2, 2)
    fit(model, lambda m, x, g: m(x).pow(2).mean(), torch.ones(4, 2), TrainConfig(n_steps=2, progress=False))
    assert next(model.parameters()).device.type == "cpu"
    assert cli.CONFIGS["mnist-vp"].train.device == "auto"  # the command line does pick the GPU
