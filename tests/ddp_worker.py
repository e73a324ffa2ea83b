"""Run by tests/test_images.py under `torchrun --nproc_per_node=2`: the training loop on two CPU processes (gloo).

Writes `result.pt` (rank 0) with the parameters and loss histories of four runs:
  deterministic: 4 steps of a noise-free loss, to compare with one process on the concatenated batch;
  resumed: 4 steps with a checkpoint, then a fresh model resumed from it to 8 steps (DSM, noise per rank);
  straight: the same 8 steps without interruption.
  dropout: the first dropout mask and loss noise each rank drew, and a dropout model resumed from 2 to 4 steps against a straight run.
"""

import sys
from pathlib import Path

import torch

from scorelab import ScoreMLP, TrainConfig, fit, losses

BATCH = 8  # per process


def new_model():
    torch.manual_seed(0)
    return ScoreMLP(2, hidden=16, n_layers=2)


def data():
    return torch.randn(256, 2, generator=torch.Generator().manual_seed(1))


def regression_loss(model, x, generator):
    return ((model(x) + x) ** 2).mean()  # the score of N(0, I), no randomness


def dsm_loss(model, x, generator):
    return losses.dsm(model, x, 0.5, generator=generator)


def dropout_run(config: TrainConfig, checkpoint=None, masks=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 2))

    def loss(model, x, generator):
        if masks is not None:  # a dropout mask drawn as the model's are, and loss noise
            masks.append((torch.nn.functional.dropout(torch.ones(16), 0.5), torch.randn(4, generator=generator)))
        return ((model(x) + x) ** 2).mean()

    return fit(model, loss, data(), config, checkpoint=checkpoint), model.state_dict()


def main(out: Path) -> None:
    config = TrainConfig(n_steps=4, batch_size=BATCH, lr=1e-2, progress=False, log_every=2, checkpoint_every=2)
    results = {}
    model = new_model()
    results["deterministic"] = (fit(model, regression_loss, data(), config), model.state_dict())
    fit(new_model(), dsm_loss, data(), config, checkpoint=out / "ddp.pt")
    model = new_model()
    longer = TrainConfig(**{**config.__dict__, "n_steps": 8})
    results["resumed"] = (fit(model, dsm_loss, data(), longer, checkpoint=out / "ddp.pt"), model.state_dict())
    model = new_model()
    results["straight"] = (fit(model, dsm_loss, data(), longer), model.state_dict())
    masks = []
    dropout_run(config, masks=masks)
    dropout_run(config, out / "dropout.pt")
    every_rank = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every_rank, masks[0])
    results["dropout_masks"] = every_rank
    results["dropout_resumed"] = dropout_run(longer, out / "dropout.pt")
    results["dropout_straight"] = dropout_run(longer)
    if torch.distributed.get_rank() == 0:
        torch.save(results, out / "result.pt")
    torch.distributed.barrier()  # as `scorelab` does: no rank tears the group down while another still uses it
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
