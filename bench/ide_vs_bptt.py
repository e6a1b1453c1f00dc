"""IDE vs surrogate BPTT on the same feedback SNN: training-step time and memory against T.

    python bench/ide_vs_bptt.py [--model f_conv] [--batch 32] [--T 5 10 30 100] [--steps 3]

For each T both strategies run the same model, batch and weights side by side; the table gives
the mean time of a training step (forward + backward) and the bytes autograd keeps for backward
(flat in T for IDE, linear for BPTT), plus the CUDA peak when a GPU is used.
"""

from __future__ import annotations

import argparse
import time

import torch

from memory import cuda_peak, saved_tensor_bytes

from lightning_snn.models import MODELS
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES

SHAPES = {"f_conv": (1, 28, 28), "f_mlp": (1, 28, 28), "alexnet_f": (3, 32, 32), "cifarnet_f": (3, 32, 32)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="f_conv", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--T", type=int, nargs="+", default=[5, 10, 30, 100])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = MODELS.build(args.model, input_shape=SHAPES[args.model], num_classes=10,
                       neuron=NeuronConfig(threshold=2.0, leak=0.95)).to(dev)
    x = torch.rand(args.batch, *SHAPES[args.model], device=dev) * 3
    y = torch.randint(0, 10, (args.batch,), device=dev)
    print(f"model={args.model} batch={args.batch} device={dev} threads={torch.get_num_threads()}")
    print(f"{'T':>4} | {'strategy':>8} | {'step ms':>9} | {'saved MiB':>9} | {'cuda peak MiB':>13}")
    for T in args.T:
        for name in ("ide", "bptt"):
            strategy = STRATEGIES.build(name, T=T)

            def step() -> None:
                net.zero_grad(set_to_none=True)
                strategy.train_step(net, x, y)  # loss of the time-averaged output, backward

            step()  # warm-up
            with saved_tensor_bytes() as saved:
                step()
            peak = cuda_peak(step, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            ms = (time.perf_counter() - t0) / args.steps * 1e3
            cuda = f"{peak / 2**20:13.1f}" if peak is not None else f"{'-':>13}"
            print(f"{T:>4} | {name:>8} | {ms:9.1f} | {saved[0] / 2**20:9.2f} | {cuda}", flush=True)


if __name__ == "__main__":
    main()
