"""Does the U-Net need a nonlinearity on the noise embedding before each block's projection? A paired measurement.

    python bench/unet_ablation.py                  # 16x16 shapes, tiny U-Net, 4 seeds of 400 steps: ~2 min on 2 cores
    python bench/unet_ablation.py --data DIR       # the same on MNIST's test split (IDX files in DIR)

Both variants start from the same weights (SiLU has none), see the same batches and the same loss noise, so each seed
gives a paired difference. Printed: the held-out loss (per pixel, `sde_dsm` on the VP SDE, the same 4 noise draws of
512 held-out images for every model) after training, per variant, and the paired difference with its standard error.
DDPM (Ho et al. 2020) and score_sde put SiLU before the projection; without it the projection composes linearly with
the embedding MLP's last layer.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import replace

import torch

import scorelab as sl
from scorelab import datasets, losses
from scorelab.nets import UNET_PRESETS
from scorelab.sde import condition_on_std


def held_out_loss(net, sde, images, repeats: int = 4) -> float:
    score = condition_on_std(net, sde)
    with torch.no_grad():
        values = [losses.sde_dsm(score, images, sde, generator=1000 + r).item() / images[0].numel() for r in range(repeats)]
    return statistics.mean(values)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="MNIST folder (IDX files); default: procedural 16x16 shapes")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    if args.data:
        pixels, _ = datasets.load_idx_images("mnist", args.data, "test")
    else:
        pixels, _ = datasets.shapes(5000, 16, generator=0)
    images = datasets.to_model_range(pixels)
    train, held = images[:-512], images[-512:]
    sde = sl.VPSDE()
    n_pixels = images[0].numel()
    results = {True: [], False: []}
    for seed in range(args.seeds):
        for activation in (True, False):
            torch.manual_seed(seed)
            net = sl.UNet(replace(UNET_PRESETS["tiny"], channels=images.shape[1], embedding_activation=activation))
            config = sl.TrainConfig(n_steps=args.steps, batch_size=args.batch, lr=2e-3, warmup_steps=50, seed=seed, progress=False)
            sl.fit(net, lambda m, x, g: losses.sde_dsm(condition_on_std(m, sde), x, sde, generator=g) / n_pixels, train, config)
            results[activation].append(held_out_loss(net, sde, held))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {'MNIST' if args.data else 'shapes 16x16'}, tiny U-Net, "
          f"{args.steps} steps of batch {args.batch}, {args.seeds} seeds")  # fmt: skip
    for activation, values in results.items():
        name = "SiLU before the projection" if activation else "linear projection"
        print(f"  {name:28s} held-out loss per pixel {statistics.mean(values):.5f}  (seeds: {', '.join(f'{v:.5f}' for v in values)})")
    diffs = [a - b for a, b in zip(results[True], results[False])]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    print(f"  paired difference (SiLU - linear): {statistics.mean(diffs):+.5f} +- {se:.5f} (standard error over seeds)")


if __name__ == "__main__":
    main()
