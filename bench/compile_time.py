"""Compile time of a BPTT training step under ``torch.compile`` against T, for the fused neuron op
(``model.neuron.backend: triton``: one custom-op node per neuron layer) and the torch loop (unrolled
T times by the compiler).

Every (backend, T) point runs in a fresh subprocess with an empty inductor cache and one compile
thread. Compile time is the time of the first compiled step (forward + backward: tracing,
AOTAutograd, inductor code generation and the step itself) minus the median of the following
steps, both as wall time and as CPU time of the process and the compilers it ran (the CPU time does
not move when other jobs share the machine). Without CUDA the kernels run under Triton's CPU
interpreter (set here before triton is imported); its run time is not a speed figure, and it is
subtracted with the steady steps.

    python bench/compile_time.py                                  # convnet, T = 4 and 32
    python bench/compile_time.py --network vgg11 --batch-size 128 --T 4 8 16 32   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the C++ compiler runs)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(backend: str, T: int, network: str, width: float | None, batch_size: int, steps: int,
            device: str) -> dict:
    """One point, in this process: compile time and steady step time of a compiled BPTT step."""
    import torch
    import torch.nn.functional as F

    from lightning_snn.models import MODELS
    from lightning_snn.neurons import NeuronConfig
    from lightning_snn.strategies import STRATEGIES

    torch.manual_seed(0)
    dev = torch.device(device)
    neuron = NeuronConfig(threshold=1.0, leak=1.0, backend=backend)
    shape = (3, 32, 32) if network.startswith("vgg") else (1, 28, 28)
    args = {} if width is None else {"width": width}
    net = MODELS.build(network, input_shape=shape, num_classes=10, neuron=neuron, **args).to(dev)
    net.compile()
    strat = STRATEGIES.build("bptt", T=T)
    x = torch.randn(batch_size, *shape, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)

    def step() -> tuple[float, float]:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), cpu_seconds()
        net.zero_grad(set_to_none=True)
        F.cross_entropy(strat.forward(net, x).mean(0), y).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, cpu_seconds() - c0

    first, first_cpu = step()
    steady = [step() for _ in range(steps)]
    wall, cpu = statistics.median(w for w, _ in steady), statistics.median(c for _, c in steady)
    return {"backend": backend, "T": T, "network": network, "batch_size": batch_size,
            "device": str(dev), "first_step_s": first, "step_s": wall, "compile_s": first - wall,
            "first_step_cpu_s": first_cpu, "step_cpu_s": cpu, "compile_cpu_s": first_cpu - cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--network", default="convnet")
    p.add_argument("--width", type=float, default=None, help="VGG width multiplier")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--T", type=int, nargs="+", default=[4, 32])
    p.add_argument("--backends", nargs="+", default=["triton", "torch"], choices=["triton", "torch"])
    p.add_argument("--steps", type=int, default=3, help="steady steps after the first")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--_point", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()

    if a._point:  # child: one measurement
        row = measure(a._point[0], int(a._point[1]), a.network, a.width, a.batch_size, a.steps,
                      a.device)
        print("ROW " + json.dumps(row), flush=True)
        return

    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for backend in a.backends:
        for T in a.T:
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_FX_GRAPH_CACHE="0",
                           TORCHINDUCTOR_AUTOGRAD_CACHE="0", TORCHINDUCTOR_COMPILE_THREADS="1",
                           PYTHONPATH=str(ROOT))
                if device == "cpu":
                    env["TRITON_INTERPRET"] = "1"  # the kernels on CPU tensors
                cmd = [sys.executable, __file__, "--_point", backend, str(T), "--network", a.network,
                       "--batch-size", str(a.batch_size), "--steps", str(a.steps), "--device", device]
                cmd += ["--width", str(a.width)] if a.width is not None else []
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")]
            if out.returncode or not line:
                sys.exit(f"{backend} T={T} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(line[0][4:]))
            r = rows[-1]
            print(f"{backend:7s} T={T:3d}: compile {r['compile_s']:7.1f} s wall, "
                  f"{r['compile_cpu_s']:7.1f} s CPU; step {r['step_s'] * 1e3:8.1f} ms", flush=True)
    for key, what in (("compile_cpu_s", "CPU"), ("compile_s", "wall")):
        print(f"\n{a.network}, batch {a.batch_size}, {device}: compile time of a BPTT step, s {what}\n")
        print("| backend | " + " | ".join(f"T={T}" for T in a.T) + f" | T={a.T[-1]} / T={a.T[0]} |")
        print("|---|" + "---|" * (len(a.T) + 1))
        for backend in a.backends:
            c = [r[key] for r in rows if r["backend"] == backend]
            print(f"| {backend} | " + " | ".join(f"{v:.1f}" for v in c) + f" | {c[-1] / c[0]:.2f} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
