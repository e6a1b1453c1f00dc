"""Training-step time and peak memory of BPTT, OTTT_A, OTTT_O, DSR, SPIDE, proxy learning, SLTT and
SLTT-K against the number of time steps T, for the same VGG-11 on CIFAR-sized input (SPIDE, which trains feedback
models, on ``--feedback-network``; proxy learning and SPIDE with IF neurons, which they need).

Every (strategy, T) point runs in a fresh subprocess. Peak memory of one training step: on CUDA
``torch.cuda.max_memory_allocated`` minus the memory allocated before the step; on CPU the rise of
the process's peak resident set (``VmHWM``) over its resident set before the first step (parameters,
data and the imported libraries are in the baseline; plain SGD, so no optimiser state appears).
Step time is the mean of the following steps. A strategy is a registered name, optionally with
constructor arguments: ``sltt:K=2`` is SLTT-K with K = 2.

    python bench/strategies_memory.py                      # the full table
    python bench/strategies_memory.py --T 2 4 --batch-size 4 --strategies bptt ottt_a
    python bench/strategies_memory.py --T 2 4 8 --strategies spide proxy --T-b 50
    python bench/strategies_memory.py --T 2 4 8 --strategies bptt sltt sltt:K=1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STRATEGIES = ("bptt", "ottt_a", "ottt_o", "dsr", "spide", "proxy", "sltt", "sltt:K=2")
IF_ONLY = ("spide", "proxy")  # strategies whose neurons are IF


def parse_spec(spec: str) -> tuple[str, dict[str, int | float | str]]:
    """``name[:key=value,...]`` -> (registered name, constructor arguments); numbers are parsed."""
    name, _, rest = spec.partition(":")
    args: dict[str, int | float | str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"strategy spec {spec!r}: expected name:key=value,... ")
        for cast in (int, float, str):
            try:
                args[key] = cast(value)
                break
            except ValueError:
                continue
    return name, args


def strategy_spec(spec: str) -> str:
    """argparse type: a registered strategy name, with optional arguments."""
    from lightning_snn.strategies import STRATEGIES as REGISTRY

    name, _ = parse_spec(spec)
    if name not in REGISTRY.names():
        raise argparse.ArgumentTypeError(f"unknown strategy {name!r}; valid: {REGISTRY.names()}")
    return spec


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(strategy: str, T: int, network: str, batch_size: int, steps: int, device: str,
            feedback_network: str = "alexnet_f", T_b: int = 50) -> dict:
    """One point, in this process: peak memory of the first step, mean time of the next ones."""
    import torch

    from lightning_snn.models import MODELS
    from lightning_snn.neurons import NeuronConfig
    from lightning_snn.strategies import STRATEGIES as REGISTRY

    torch.manual_seed(0)
    dev = torch.device(device)
    spec, (strategy, args) = strategy, parse_spec(strategy)
    neuron = NeuronConfig(threshold=1.0, leak=1.0 if strategy in IF_ONLY else 0.5, detach_reset=True,
                          trainable_threshold=strategy == "dsr")
    if strategy == "spide":
        network = feedback_network
    net = MODELS.build(network, input_shape=(3, 32, 32), num_classes=10, neuron=neuron).to(dev)
    extra = {"T_b": T_b, "grad_scale": 100.0} if strategy == "spide" else {}
    strat = REGISTRY.build(strategy, T=T, **extra, **args)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)

    def backward(loss, last):  # the per-batch or per-time-step optimiser step of the strategy
        if strat.update_every_step:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if strat.update_every_step:
            opt.step()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        strat.train_step(net, x, y, backward=backward)
        if not strat.update_every_step:
            opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        step()
        peak = _status_kib("VmHWM") * 1024 - base
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return {"strategy": spec, "T": T, "peak_mib": peak / 2**20,
            "step_s": sum(times) / len(times), "device": str(dev), "batch_size": batch_size,
            "network": network, **({"T_b": T_b} if strategy == "spide" else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), type=strategy_spec,
                   help="registered names, optionally with arguments (sltt:K=2)")
    p.add_argument("--T", nargs="+", type=int, default=[2, 4, 6, 8, 16])
    p.add_argument("--network", default="vgg11_ws", help="vgg11_ws (OTTT's model) or vgg11 (BN)")
    p.add_argument("--feedback-network", default="alexnet_f", help="the model SPIDE trains")
    p.add_argument("--T-b", type=int, default=50, help="SPIDE's backward time steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed steps after the measured first one")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", type=Path, default=Path("bench/results/strategies_memory.json"))
    p.add_argument("--point", nargs=2, metavar=("STRATEGY", "T"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.point:  # child: one measurement, one JSON line
        r = measure(args.point[0], int(args.point[1]), args.network, args.batch_size, args.steps, args.device,
                    args.feedback_network, args.T_b)
        print("RESULT " + json.dumps(r), flush=True)
        return
    rows = []
    for T in args.T:
        for s in args.strategies:
            cmd = [sys.executable, __file__, "--point", s, str(T), "--network", args.network,
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--device", args.device,
                   "--feedback-network", args.feedback_network, "--T-b", str(args.T_b)]
            # fixed mmap threshold: large freed buffers go back to the OS, so RSS follows the heap
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                raise RuntimeError(f"{s} T={T} failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(line[0][7:]))
            r = rows[-1]
            print(f"  {s:8s} T={T:3d}  {r['step_s']:.3f} s  {r['peak_mib']:.0f} MiB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    by = {(r["strategy"], r["T"]): r for r in rows}
    print(f"\n{args.network}, 3x32x32 input, batch {args.batch_size}, {rows[0]['device']}: "
          "training-step time (s) / peak step memory (MiB)"
          + (f"; spide on {args.feedback_network} with T_b={args.T_b}" if "spide" in strategies else ""))
    print("| T | " + " | ".join(strategies) + " |")
    print("|---|" + "---|" * len(strategies))
    for T in args.T:
        cells = [f"{by[s, T]['step_s']:.2f} s / {by[s, T]['peak_mib']:.0f} MiB" for s in strategies]
        print(f"| {T} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
