"""Train a tiny MLP with BPTT on 2 DDP processes (gloo, CPU) with validation; count the Python-level
reductions and gathers (all_reduce / all_gather ...) issued between two training-batch starts
(logging of step values must issue none), save the final weights and the epoch metrics.
Usage: ddp_logging.py OUT"""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from torch.utils.data import DataLoader

from ddp_ottt import RankShard
from lightning_snn.module import SNNModule

# the reductions and gathers metric syncs use. Not ``broadcast``: Lightning 2.6's training loop
# broadcasts a SIGTERM flag from rank 0 before every step under DDP, whatever is logged.
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "reduce", "gather",
               "all_gather_into_tensor", "reduce_scatter")
CALLS = [0]


NAMES: list[str] = []


def _counting(fn, name):
    def wrapped(*args, **kwargs):
        CALLS[0] += 1
        NAMES.append(name)
        return fn(*args, **kwargs)
    return wrapped


for _name in COLLECTIVES:
    if hasattr(dist, _name):
        setattr(dist, _name, _counting(getattr(dist, _name), _name))


class Between(pl.Callback):
    def __init__(self) -> None:
        self.last: int | None = None
        self.between: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.last is not None:
            self.between.append(CALLS[0] - self.last)

        self.last = CALLS[0]


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) * 2, torch.randint(0, 3, (n,), generator=g)


def main(out: Path) -> None:
    torch.manual_seed(0)
    module = SNNModule("mlp", num_classes=3, input_shape=(1, 4, 4),
                       network_args={"hidden": [12], "batch_norm": False}, T=3, lr=0.2,
                       momentum=0.0, weight_decay=0.0, scheduler="constant").double()
    probe = Between()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo"),
                         max_epochs=1, callbacks=[probe], logger=False, enable_checkpointing=False,
                         enable_progress_bar=True, enable_model_summary=False,
                         use_distributed_sampler=False, num_sanity_val_steps=0)
    (xt, yt), (xv, yv) = data(24, 1), data(8, 2)
    trainer.fit(module, DataLoader(RankShard(xt, yt, 2), batch_size=3),  # 4 steps of 2 x 3
                DataLoader(RankShard(xv, yv, 2), batch_size=2))  # 2 batches of 2 per rank
    gathered = [None, None]
    torch.distributed.all_gather_object(gathered, probe.between)
    if trainer.global_rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().clone() for k, v in module.net.state_dict().items()}, out / "params.pt")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (out / "result.json").write_text(json.dumps({"between": gathered, "metrics": metrics}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
