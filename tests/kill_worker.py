"""Run by tests/test_train.py's kill test: a small training run that prints each finished step and checkpoints often.

python tests/kill_worker.py CHECKPOINT N_STEPS
"""

import sys

import torch

from scorelab import EMA, ScoreMLP, TrainConfig, fit, losses
from scorelab.datasets import ring_mixture

CHECKPOINT_EVERY = 5


def main(checkpoint: str, n_steps: int) -> None:
    torch.manual_seed(0)
    model = ScoreMLP(2, hidden=64, n_layers=2)
    ema = EMA(model, decay=0.9)
    config = TrainConfig(n_steps=n_steps, batch_size=128, seed=7, checkpoint_every=CHECKPOINT_EVERY, progress=False)

    def report(info):
        print(info["i"], flush=True)  # this step is finished (and checkpointed, when it was a checkpoint step)

    fit(
        model,
        lambda m, x, g: losses.dsm(m, x, 0.5, generator=g),
        ring_mixture(3).sample,
        config,
        ema=ema,
        checkpoint=checkpoint,
        callback=report,
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
