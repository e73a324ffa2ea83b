"""MNIST on a laptop CPU: the `mnist-cpu` preset's curve of training minutes against sample quality, from one run.

    python bench/mnist_cpu.py --data ../shared/data/mnist            # ~40 min on 2 cores (half of it judging)
    python bench/mnist_cpu.py --data DIR --every 450 --out runs/bench-mnist-cpu lr=3e-3
    python bench/mnist_cpu.py --data DIR --out runs/bench-mnist-cpu-seed1 seed=1     # another training seed

What it does, with the command line a user has:
1. `scorelab classifier --config mnist --split test --width 32 --steps 4000`: a small CNN trained on the first 9 000
   test digits, its accuracy on the last 1 000 printed (the judge; the same 1 000 digits the diffusion model never
   sees);
2. `scorelab train --config mnist-cpu` to the preset's end (2300 steps, sized for about ten minutes on a quiet 2-core
   machine; `--minutes` stops it earlier), judging `--samples` EMA samples every `--every` steps: the share the
   classifier recognises with probability >= 0.9, classifier-FID against the 1 000 held-out digits, the class
   histogram;
3. the curve: training minutes (the run's own clock, without the judging) against those numbers, the last grid, and
   the nulls by the same pipeline with the model removed: held-out real digits in place of samples for the confident
   share (digits neither model trained on); `--samples` training digits' classifier-FID is printed too, but it is
   no null (the judge trained on those digits), so the FID column is a trend;
4. the last checkpoint judged again on `--final-samples` EMA samples (1024 by default: a binomial SE of about
   0.013, where a 256-sample judgement's ± 0.03 cannot resolve a few points either side of the goal), with a figure
   of what the judge recognises and what not (judged.png), then the same starting draws autoguided by the run's
   guide.pt (its EMA at step 575) at each `--guidance` weight (judged-autoguided-W.png; twice the sampling time);
5. where the digits are lost: held-out digits noised to t0 and carried back by the model's reverse SDE (SDEdit), for
   t0 from 0.2 to T: the confident share, and the share still read as the digit it started from.
Goal (issue 24): >= 80 % of samples recognised with confidence >= 0.9 within 10 minutes of training on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from scorelab import cli, datasets, metrics, sampling, viz
from scorelab.sde import condition_on_std


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with MNIST's IDX files (the test split is enough)")
    p.add_argument("--out", default="runs/bench-mnist-cpu", help="folder for the classifier and the run")
    p.add_argument("--minutes", type=float, default=None, help="stop training after this much of its own clock "
                   "(the judging not counted); default: run the preset to its end")  # fmt: skip
    p.add_argument("--every", type=int, default=575, help="steps between judgements")
    p.add_argument("--samples", type=int, default=256, help="EMA samples per judgement")
    p.add_argument("--final-samples", type=int, default=1024, help="EMA samples judging the last checkpoint")
    p.add_argument("--guidance", default="2", help="autoguidance weights judged with the run's guide.pt, comma-separated "
                   "(the preset keeps its EMA at step 575)")  # fmt: skip
    p.add_argument("--judge-width", type=int, default=32, help="the judge's first-layer channels")
    p.add_argument("--judge-steps", type=int, default=4000, help="the judge's optimiser steps (batch 128)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the mnist-cpu preset")
    args = p.parse_args(argv)
    out = Path(args.out)
    judge = out / "classifier" / "classifier.pt"
    if not judge.is_file():
        cli.main(["classifier", "--config", "mnist", "--data", args.data, "--split", "test", "--out", str(judge.parent),
                  "--width", str(args.judge_width), "--steps", str(args.judge_steps)])  # fmt: skip
    classifier, meta = cli.load_classifier(judge)
    # the nulls, by the same pipeline with the model removed: real digits in place of samples (held-out ones for the
    # confident share: the judge trained on the others and is surer of them; training digits for classifier-FID)
    config = cli.apply_overrides(cli.CONFIGS["mnist-cpu"], args.overrides)
    pixels, _ = cli.load_images(config, args.data)
    real = datasets.to_model_range(pixels)
    held, seen = real[len(real) - config.holdout :], real[: len(real) - config.holdout]
    ceiling = metrics.classifier_fid(held, seen[: args.samples], classifier)
    held_confident = metrics.classifier_fid(held, held, classifier).confident_fraction
    run = out / "run"
    command = [sys.executable, "-m", "scorelab", "train", "--config", "mnist-cpu", "--data", args.data, "--out", str(run),
               f"classifier={judge}", f"fid_every={args.every}", f"fid_samples={args.samples}",
               "progress=false", *args.overrides]  # fmt: skip
    if (run / "checkpoint.pt").exists():
        command += ["--resume"]
    process = subprocess.Popen(command, env={**os.environ, "TQDM_DISABLE": "1"})
    budget = args.minutes * 60 if args.minutes is not None else float("inf")
    while process.poll() is None:  # the run's own clock (log.jsonl) excludes judging: stop it when that is spent
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] if (run / "log.jsonl").exists() else []
            if records and records[-1]["train_seconds"] >= budget:
                process.send_signal(signal.SIGTERM)  # fit checkpoints, then stops
                process.wait()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    judged = [r for r in records if "classifier_fid" in r]
    speed = [r["images_per_s"] for r in records if "images_per_s" in r]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; classifier accuracy on the 1 000 held-out digits "
          f"{meta['holdout_accuracy']:.3f}; training {sorted(speed)[len(speed) // 2]:.0f} images/s (median)")  # fmt: skip
    print(f"nulls (real digits in place of samples): held-out digits confident {held_confident:.3f} (training digits "
          f"{ceiling.confident_fraction:.3f}); {args.samples} training digits' classifier-FID {ceiling.fid:.2f} against "
          "the held-out ones (no null for FID: the judge trained on them, so their features are not a sample's)")  # fmt: skip
    print(f"{'minutes':>8s} {'step':>6s} {'confident >= 0.9':>17s} {'classifier-FID':>15s}  class histogram (0-9)")
    for r in judged:
        histogram = " ".join(f"{v:.2f}" for v in r["class_histogram"])
        print(f"{r['train_seconds'] / 60:8.1f} {r['step']:6d} {r['confident_fraction']:17.3f} {r['classifier_fid']:15.2f}  {histogram}")
    grids = sorted((run / "samples").glob("step_*.png"))
    print(f"last grid: {grids[-1] if grids else '(none)'}")
    ema = _ema_model(run / "checkpoint.pt", held.shape[1])  # the last EMA weights, for both read-outs below
    judge_last(ema, held, classifier, args.final_samples, figure=out / "judged.png")
    if (run / "guide.pt").exists():  # autoguidance by the run's own EMA at guide_step (Karras et al. 2024)
        guide = cli.load_model(run / "guide.pt")[0]
        for weight in (float(w) for w in args.guidance.split(",")):
            figure = out / f"judged-autoguided-{weight:g}.png"
            judge_last(ema, held, classifier, args.final_samples, figure=figure, guide=guide, weight=weight)
    where_digits_are_lost(ema, held, classifier, args.samples)
    return 0


def _ema_model(checkpoint: Path, channels: int):
    """(the EMA network, the run's configuration, the steps taken) from `checkpoint`."""
    state = cli.load_checkpoint(checkpoint)
    config = cli.run_config_from(state, checkpoint)
    model = cli.build_model(config, channels).eval()
    model.load_state_dict(state["ema"]["module"])
    return model, config, len(state["history"])  # one loss per step taken


@torch.no_grad()
def judge_last(ema, held: torch.Tensor, classifier, n: int, batch: int = 256, figure: Path | None = None, guide=None, weight=1.0) -> None:
    """The last checkpoint's EMA weights (`_ema_model`'s triple) judged on `n` samples (the run's sampler and steps,
    batches of `batch`, each batch its own seed, the same with or without a guide): the confident share with its
    binomial SE, classifier-FID and the class histogram; with `figure`, a PNG of the samples the judge recognises
    and of those it does not, one row per class it reads (what the missing share looks like). With `guide` (the
    run's guide.pt network), autoguided samples of weight `weight` (`cli.draw_samples`)."""
    model, config, step = ema
    guided = {"guide": guide, "guidance": weight} if guide is not None else {}
    parts = [cli.draw_samples(model, config, (min(batch, n - i), *held.shape[1:]), "cpu", generator=1000 + i, **guided)[0]
             for i in range(0, n, batch)]  # fmt: skip
    samples = torch.cat(parts).clamp(-1, 1)
    r = metrics.classifier_fid(held, samples, classifier)
    share = r.confident_fraction
    histogram = " ".join(f"{v:.2f}" for v in r.class_histogram)
    how = f" autoguided (w = {weight:g})" if guide is not None else ""
    print(
        f"last checkpoint (step {step}) on {n}{how} EMA samples: confident >= 0.9 {share:.3f} "
        f"± {math.sqrt(share * (1 - share) / n):.3f} (binomial SE), classifier-FID {r.fid:.2f}, classes {histogram}"
    )
    if figure is not None:
        confidence, label = classifier(samples).softmax(1).max(1)
        fig, axes = viz.subplots(2, size=4.2)
        for ax, keep, name in ((axes[0], confidence >= 0.9, "recognised"), (axes[1], confidence < 0.9, "not recognised")):
            title = f"{name} (confidence {'≥' if name == 'recognised' else '<'} 0.9): {int(keep.sum())} of {n}"
            viz.plot_images_by_class(samples[keep], label[keep], [str(k) for k in range(10)], 8, ax=ax, title=title)
            ax.set_ylabel("the judge's reading (count)")
        fig.suptitle(f"EMA samples at step {step}{how}, by the class the judge reads")
        fig.savefig(figure, dpi=100, bbox_inches="tight")
        plt.close(fig)  # one figure per weight judged: do not keep them all open
        print(f"recognised and unrecognised samples: {figure}")


@torch.no_grad()
def where_digits_are_lost(ema, held: torch.Tensor, classifier, n: int, times=(0.2, 0.35, 0.5, 0.65, 1.0)) -> None:
    """At which noise levels the trained model loses digits (SDEdit's experiment, Meng et al. 2022): `n` held-out
    digits pushed forward to t0, then the reverse SDE from there (`pc_sample(t_start=t0)`, the run's step size) back
    to eps with the EMA weights. Printed: the share the judge recognises with confidence >= 0.9 (the real digits'
    share is the null; from t0 = T the start is pure noise, as in sampling) and the share it reads as the digit it
    started from (chance, 0.1, from t0 = T)."""
    model, config, _ = ema
    sde = cli.SDES[config.sde](config)
    score = condition_on_std(model, sde)
    generator = torch.Generator().manual_seed(0)
    source = held[torch.randperm(len(held), generator=generator)[:n]]
    labels = classifier(source).argmax(1)
    print(f"where digits are lost: {len(source)} held-out digits noised to t0, then the reverse SDE to eps "
          f"({config.sample_steps} steps per unit of t, EMA weights)")  # fmt: skip
    print(f"{'t0':>6s} {'log-SNR':>8s} {'confident >= 0.9':>17s} {'same digit as the start':>24s}")
    for t0 in times:
        mean_scale, std = (c.item() for c in sde.marginal_coeffs(torch.tensor([t0 * sde.T])))
        x = mean_scale * source + std * torch.randn(source.shape, generator=generator)
        steps = max(1, round(config.sample_steps * t0))
        x = sampling.pc_sample(score, sde, x, steps, t_start=t0 * sde.T, generator=generator).clamp(-1, 1)
        confident = metrics.classifier_fid(held, x, classifier).confident_fraction
        same = (classifier(x).argmax(1) == labels).float().mean().item()
        print(f"{t0 * sde.T:6.2f} {2 * math.log(mean_scale / std):8.2f} {confident:17.3f} {same:24.3f}")


if __name__ == "__main__":
    sys.exit(main())
