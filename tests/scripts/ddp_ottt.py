"""Train a tiny MLP with OTTT_A (or another online strategy) for two batches on 1 process or 2 DDP
processes (gloo, CPU); save the final parameters and the number of gradient all-reduces.
Usage: ddp_ottt.py DEVICES OUT [STRATEGY [STRATEGY_ARGS_JSON [T]]]"""

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader

from lightning_snn.loss import LossConfig
from lightning_snn.module import SNNModule
from lightning_snn.neurons import NeuronConfig

CALLS = [0]


def counting_allreduce(state, bucket):
    CALLS[0] += 1
    return default_hooks.allreduce_hook(state, bucket)


class CountAllReduce(pl.Callback):
    """Lightning registers DDP comm hooks on CUDA only: register the counting hook here."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if hasattr(trainer.model, "register_comm_hook"):
            trainer.model.register_comm_hook(None, counting_allreduce)


class RankShard(torch.utils.data.Dataset):
    """Samples rank, rank + world, ... of a tensor data set, in order (resolved at access time,
    after the trainer has started the process group)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, world: int) -> None:
        self.x, self.y, self.world = x, y, world

    def __len__(self) -> int:
        return len(self.x) // self.world

    def __getitem__(self, i: int):
        j = i * self.world + (dist.get_rank() if self.world > 1 else 0)
        return self.x[j], self.y[j]


def main(devices: int, out: Path, strategy_name: str = "ottt_a", strategy_args: dict | None = None,
         T: int = 3) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (16,), generator=g)
    module = SNNModule(
        "mlp", num_classes=3, input_shape=(6,), network_args={"hidden": (8, 5), "batch_norm": False},
        neuron=NeuronConfig(threshold=0.5, leak=0.6, surrogate_alpha=2.0), strategy=strategy_name,
        strategy_args=strategy_args, loss=LossConfig(mse_weight=0.3), T=T, optimizer="sgd", lr=0.5, momentum=0.0,
        weight_decay=0.0, scheduler="constant",
    ).double()
    drawn: list[list[int]] = []  # the back-propagating steps of each batch
    steps_of = module.strategy.backward_steps
    module.strategy.backward_steps = lambda T: drawn.append(steps_of(T)) or drawn[-1]  # type: ignore[method-assign]
    strategy = DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_epochs=1,
                         callbacks=[CountAllReduce()],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False)
    # batch 8 / devices per process: the same global batches (0..7, 8..15), two optimiser steps
    trainer.fit(module, DataLoader(RankShard(x, y, devices), batch_size=8 // devices, shuffle=False))
    calls, steps = [CALLS[0]], [drawn]
    if devices > 1:
        calls, steps = [None] * devices, [None] * devices
        dist.all_gather_object(calls, CALLS[0])
        dist.all_gather_object(steps, drawn)
    if trainer.global_rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().clone() for k, v in module.net.state_dict().items()}, out / "params.pt")
        (out / "calls.json").write_text(json.dumps({"steps": trainer.global_step, "allreduce_per_rank": calls,
                                                    "backward_steps_per_rank": steps}))
    if dist.is_initialized():  # leave no gloo thread running into interpreter shutdown (abort)
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    extra = sys.argv[3:]
    main(int(sys.argv[1]), Path(sys.argv[2]), *extra[:1], *[json.loads(a) for a in extra[1:3]])
