"""Judge a `scorelab train` run: classifier-FID over training time, samplers at equal NFE, bits/dim, one figure.

    python bench/image_eval.py --run runs/mnist-vp --classifier runs/mnist-classifier/classifier.pt \
        --data ../shared/data/mnist --out results/

Reads the run's `log.jsonl` (the classifier-FID records `scorelab train classifier=... fid_every=N` wrote) and its
checkpoint (EMA weights). Measures, on the run's holdout images (never trained on): the predictor-corrector sampler,
Euler-Maruyama and the probability-flow ODE (fixed Euler steps) at the same number of score evaluations, each judged
by `metrics.classifier_fid`; and bits/dim of held-out images by the ODE likelihood (Hutchinson). Writes
`image_eval.json` and one PNG with the FID and recognisability curves against training minutes and the three sample
grids, and prints the numbers. "Recognisable": the classifier gives >= 90 % of samples a class with probability >= 0.9,
from some measurement on and at every later one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scorelab import cli, datasets, likelihood, metrics, viz  # noqa: E402
from scorelab.sde import condition_on_std  # noqa: E402
from scorelab.train import load_checkpoint, resolve_device  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="folder of a scorelab train run (checkpoint.pt, log.jsonl)")
    p.add_argument("--classifier", required=True, help="classifier.pt from scorelab classifier")
    p.add_argument("--data", help="dataset folder (not needed for shapes)")
    p.add_argument("--out", required=True, help="folder for image_eval.json and image_eval.png")
    p.add_argument("--n", type=int, default=256, help="samples per sampler")
    p.add_argument("--nfe", type=int, default=200, help="score evaluations per sample, equal for every sampler")
    p.add_argument("--bpd-images", type=int, default=64, help="held-out images for bits/dim")
    p.add_argument("--ode-tolerance", type=float, default=1e-5, help="rtol = atol of the bits/dim ODE (dopri5)")
    p.add_argument("--ode-eps", type=float, default=1e-5, help="smallest time of the bits/dim ODE")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(run / "checkpoint.pt")
    config = cli.run_config_from(state, run / "checkpoint.pt")
    model = cli.build_model(config, state["metadata"]["image_shape"][0])
    model.load_state_dict(state["ema"]["module"])
    model.to(device).eval()
    judge, judge_meta = cli.load_classifier(args.classifier, device)
    pixels, _ = cli.load_images(config, args.data)
    held = pixels[len(pixels) - config.holdout :]
    real = datasets.to_model_range(held).to(device)
    shape = (args.n, *real.shape[1:])
    where = f"{config.dataset} {config.split} split, {len(pixels) - config.holdout} trained on, {config.holdout} held out"

    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    curve = [r for r in records if "classifier_fid" in r]
    # recognisable from the first measurement after which the share never drops below 0.9 again: a classifier can be
    # confident about the blobs of an untrained model, so one early measurement above the line means nothing
    lasting = [i for i in range(len(curve)) if all(r["confident_fraction"] >= 0.9 for r in curve[i:])]
    recognisable = curve[lasting[0]] if lasting else None

    # samplers at equal NFE: PC spends two evaluations per step (predictor + one corrector step)
    runs = {
        "PC (reverse diffusion + Langevin)": dict(sampler="pc", n_steps=args.nfe // 2),
        "Euler-Maruyama": dict(sampler="pc", n_steps=args.nfe, predictor="euler_maruyama", corrector=None),
        "probability-flow ODE (Euler)": dict(sampler="ode", n_steps=args.nfe, method="euler"),
    }
    samplers, grids = {}, {}
    for name, options in runs.items():
        images, _ = cli.draw_samples(model, config, shape, device, generator=1, **options)
        r = metrics.classifier_fid(real, images.clamp(-1, 1), judge)
        samplers[name] = {"classifier_fid": r.fid, "confident_fraction": r.confident_fraction, "nfe": args.nfe}
        grids[name] = images[:64].cpu()

    sde = cli.SDES[config.sde](config)
    bpd = likelihood.bits_per_dim(condition_on_std(model, sde), sde, held[: args.bpd_images].to(device),
                                  divergence="hutchinson", generator=0, eps=args.ode_eps, rtol=args.ode_tolerance,
                                  atol=args.ode_tolerance)  # fmt: skip
    result = {
        "data": where,
        "classifier_holdout_accuracy": judge_meta["holdout_accuracy"],
        "train_steps": curve[-1]["step"] if curve else None,
        "train_minutes": curve[-1]["train_seconds"] / 60 if curve else None,
        "minutes_to_recognisable": recognisable["train_seconds"] / 60 if recognisable else None,
        "fid_curve": [(r["train_seconds"] / 60, r["classifier_fid"], r["confident_fraction"]) for r in curve],
        "samplers_at_equal_nfe": samplers,
        "bits_per_dim": {
            "mean": bpd.mean().item(),
            "se": (bpd.std() / len(bpd) ** 0.5).item(),
            "images": len(bpd),
            "ode": {"eps": args.ode_eps, "rtol": args.ode_tolerance, "atol": args.ode_tolerance},
        },
    }
    (out / "image_eval.json").write_text(json.dumps(result, indent=2) + "\n")

    fig, axes = plt.subplots(1, 5, figsize=(19, 4), constrained_layout=True)
    minutes = [c[0] for c in result["fid_curve"]]
    axes[0].plot(minutes, [c[1] for c in result["fid_curve"]], "o-")
    axes[0].set(xlabel="training minutes", ylabel="classifier-FID (not Inception FID)", yscale="log")
    axes[1].plot(minutes, [c[2] for c in result["fid_curve"]], "o-")
    axes[1].axhline(0.9, color="gray", ls=":")
    axes[1].set(xlabel="training minutes", ylabel="share of samples recognised (p >= 0.9)", ylim=(0, 1))
    for ax, (name, grid) in zip(axes[2:], grids.items()):
        viz.plot_images(grid, ax=ax, title=f"{name}\nNFE {args.nfe}, classifier-FID {samplers[name]['classifier_fid']:.2f}")
    fig.suptitle(f"{where}; classifier {judge_meta['holdout_accuracy']:.3f} accurate on the held-out images", fontsize="medium")
    fig.savefig(out / "image_eval.png", dpi=80)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
