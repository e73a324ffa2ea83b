"""Image-model throughput: scorelab's `nets.UNet` against diffusers' `UNet2DModel` at the same parameter count.

    python bench/images.py                       # on a GPU: every setting, about two minutes
    python bench/images.py --smoke               # anywhere: tiny sizes on the CPU, proves the script runs

Both networks train with the same loss (`losses.sde_dsm` on the VP SDE; diffusers' noise prediction eps is turned
into the score -eps / sigma(t), so the loss is its usual noise-prediction loss), the same data, batch and Adam, in one
run, in turns: fp32 (TF32 matmuls on), bf16 autocast, bf16 + channels_last, and each of those under
`torch.compile`. Printed: training images/s (median of the timed windows, with their range) and peak GPU memory per
setting, the ratios against diffusers, sampling images/s with `pc_sample` and `ode_sample` (with its NFE) through the
same samplers, and the ODE likelihood on the device against the official code's way (scipy `solve_ivp`, the state
round-tripped through numpy at every evaluation). Goals (printed, never asserted): our default settings >= 1.5x
diffusers' default (fp32 eager), >= 1.0x at each matched setting, likelihood >= 3x the round trip.

diffusers is optional (`pip install -e ".[bench]"`): without it, or without a GPU outside `--smoke`, the script says
so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import replace

import torch
from _timing import median_and_spread
from likelihood import baseline_log_prob

import scorelab as sl
from scorelab import likelihood, losses, sampling
from scorelab.nets import UNET_PRESETS, UNet
from scorelab.sde import condition_on_std

#: the settings timed for both networks: (name, autocast bf16, channels_last)
SETTINGS = [("fp32", False, False), ("bf16", True, False), ("bf16+channels_last", True, True)]


def diffusers_twin(config, size: int, target: int):
    """A `UNet2DModel` with our levels, blocks per level and attention levels, its width chosen so that its parameter
    count is closest to `target` (within 5 % is the goal; the script prints both counts)."""
    from diffusers import UNet2DModel

    levels = len(config.channel_mults)
    down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D" for i in reversed(range(levels)))

    def build(base: int):
        return UNet2DModel(
            sample_size=size,
            in_channels=config.channels,
            out_channels=config.channels,
            block_out_channels=tuple(base * m for m in config.channel_mults),
            layers_per_block=config.n_res_blocks,
            down_block_types=down,
            up_block_types=up,
            norm_num_groups=min(32, base // 4 if base >= 8 else 1),
            attention_head_dim=None,
        )

    def count(base: int) -> int:
        return sum(p.numel() for p in build(base).parameters())

    # the count grows with the width: bisect over multiples of 8 (a handful of builds, not one per width)
    lo, hi = 1, max(2, config.base_channels // 2)
    while count(8 * hi) < target:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(8 * mid) < target else (lo, mid)
    return build(8 * min((lo, hi), key=lambda b: abs(count(8 * b) - target)))


def as_score(net, sde, diffusers_net: bool):
    """The time-conditional score of either network: ours through `condition_on_std`, diffusers' as -eps / sigma."""
    if not diffusers_net:
        return condition_on_std(net, sde)

    def score(x, t):
        std = sde.marginal_coeffs(t)[1].to(x.dtype)
        return -net(x, t * 999).sample.to(x.dtype) / std.reshape(-1, *[1] * (x.ndim - 1))

    return score


def train_rate(net, diffusers_net, sde, data, batch, steps, warmup, windows, bf16, channels_last, compiled, device):
    """Images/s of Adam steps on `sde_dsm` (median and list over `windows` timed windows) and peak memory in MiB."""
    # set the layout both ways: Module.to changes the network in place, so a later setting would inherit NHWC
    net = net.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format).train()
    model = torch.compile(net) if compiled else net
    score = as_score(model, sde, diffusers_net)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    g = torch.Generator(device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step(i):
        x = data[(i * batch) % (len(data) - batch) :][:batch]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = losses.sde_dsm(score, x, sde, eps=1e-5, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):
        step(i)
    rates = []
    for w in range(windows):
        _sync(device)
        start = time.perf_counter()
        for i in range(steps):
            step(warmup + w * steps + i)
        _sync(device)
        rates.append(steps * batch / (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return rates, peak


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: proves the script runs")
    p.add_argument("--preset", default="mnist", choices=sorted(UNET_PRESETS), help="our U-Net preset")
    p.add_argument("--size", type=int, default=28, help="image side (28: MNIST)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per window")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    p.add_argument("--sample-images", type=int, default=1000)
    p.add_argument("--pc-steps", type=int, default=1000)
    p.add_argument("--likelihood-images", type=int, default=64)
    p.add_argument("--tolerance", type=float, default=1e-5, help="rtol = atol of the ODE sampler and likelihood")
    p.add_argument("--eps", type=float, default=1e-5, help="the likelihood's smallest time")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.size, args.batch, args.steps, args.windows = "tiny", 16, 4, 2, 2
        args.no_compile, args.sample_images, args.pc_steps, args.likelihood_images = True, 4, 3, 2
        args.tolerance, args.eps = 1e-3, 0.1  # an untrained network is stiff near t = 0: keep the smoke test short
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device: this benchmark measures GPU throughput (run with --smoke to check it on the CPU)")
        return 0
    try:
        import diffusers
    except ImportError:
        diffusers = None
        print('diffusers is not installed (pip install -e ".[bench]"): timing scorelab alone, no ratios')
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    config = replace(UNET_PRESETS[args.preset], channels=1)
    torch.manual_seed(0)
    ours = UNet(config)
    n_ours = sum(q.numel() for q in ours.parameters())
    nets = {"scorelab": (ours, False)}
    if diffusers is not None:
        twin = diffusers_twin(config, args.size, n_ours)
        n_twin = sum(q.numel() for q in twin.parameters())
        nets["diffusers"] = (twin, True)
    pixels, _ = sl.datasets.shapes(max(512, 4 * args.batch), args.size, generator=0)
    data = sl.datasets.to_model_range(pixels).to(device)
    sde = sl.VPSDE()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{gpu}, torch {torch.__version__}, diffusers {getattr(diffusers, '__version__', '-')}, {args.size}x{args.size}, batch {args.batch}"
    )
    print(
        f"parameters: scorelab {args.preset} {n_ours / 1e6:.2f} M"
        + (f", diffusers twin {n_twin / 1e6:.2f} M ({n_twin / n_ours - 1:+.1%})" if diffusers else "")
    )

    settings = [(n, b, c, False) for n, b, c in SETTINGS if device.type == "cuda" or not b]
    if not args.no_compile:
        settings += [(f"{n}+compile", b, c, True) for n, b, c, _ in settings]
    medians = {}
    print(f"\ntraining (sde_dsm, Adam): images/s, median [range] of {args.windows} windows of {args.steps} steps; peak MiB")
    for name, bf16, channels_last, compiled in settings:
        row = []
        for who, (net, is_diffusers) in nets.items():
            rates, peak = train_rate(
                net, is_diffusers, sde, data, args.batch, args.steps, 3, args.windows, bf16, channels_last, compiled, device
            )
            medians[who, name] = statistics.median(rates)
            row.append(f"{who} {median_and_spread(rates):>22s}" + (f" ({peak:.0f} MiB)" if device.type == "cuda" else ""))
        ratio = f"   ratio {medians['scorelab', name] / medians['diffusers', name]:.2f}x" if diffusers else ""
        print(f"  {name:28s} " + "   ".join(row) + ratio)
    if diffusers:
        default = "bf16+channels_last" if device.type == "cuda" else "fp32"  # TrainConfig's defaults on that device
        goal = medians["scorelab", default] / medians["diffusers", "fp32"]
        print(f"  speed-up of our default ({default}) over diffusers' default (fp32 eager): {goal:.2f}x (goal >= 1.5)")
        worst = min(medians["scorelab", n] / medians["diffusers", n] for n, *_ in settings)
        print(f"  worst matched-setting ratio: {worst:.2f}x (goal >= 1.0)")

    print(f"\nsampling {args.sample_images} images (eval, same samplers)")
    shape = (args.sample_images, 1, args.size, args.size)
    for who, (net, is_diffusers) in nets.items():
        score = as_score(net.eval(), sde, is_diffusers)
        x_T = sde.prior_sample(shape, generator=torch.Generator(device).manual_seed(1), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext():
            sampling.pc_sample(score, sde, x_T, 1, corrector=None, generator=2)  # warm-up
            _sync(device)
            start = time.perf_counter()
            sampling.pc_sample(score, sde, x_T, args.pc_steps, corrector=None, generator=torch.Generator(device).manual_seed(2))
            _sync(device)
            pc = args.sample_images / (time.perf_counter() - start)
            start = time.perf_counter()
            _, nfe = sampling.ode_sample(score, sde, x_T, rtol=args.tolerance, atol=args.tolerance, return_nfe=True)
            _sync(device)
            ode = args.sample_images / (time.perf_counter() - start)
        print(f"  {who:10s} PC ({args.pc_steps} steps) {pc:8.1f} images/s   ODE (dopri5, NFE {nfe}) {ode:8.1f} images/s")

    print(f"\nODE log-likelihood of {args.likelihood_images} images (Hutchinson, rtol = atol = {args.tolerance:g}), scorelab's U-Net")
    score = as_score(ours.eval().float(), sde, False)
    x = data[: args.likelihood_images].float()
    probes = losses.PROJECTIONS["gaussian"]((1, *x.shape), torch.Generator(device).manual_seed(1), x.dtype, device)  # ours too
    options = dict(eps=args.eps, rtol=args.tolerance, atol=args.tolerance)
    _sync(device)
    start = time.perf_counter()
    ours_ll = likelihood.log_prob(score, sde, x, divergence="hutchinson", generator=1, **options)
    _sync(device)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    base_ll, _ = baseline_log_prob(score, sde, x, "hutchinson", probes, **options)
    t_base = time.perf_counter() - start
    gap = (ours_ll.cpu() - base_ll.cpu()).abs().max().item()
    print(f"  on the device {t_ours:.2f} s, scipy round trip {t_base:.2f} s: speed-up {t_base / t_ours:.2f}x (goal >= 3); "
          f"max |difference| {gap:.2g} nats (same probes)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
