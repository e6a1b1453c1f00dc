"""Training speed and peak memory of lightning-snn against SpikingJelly 2.0.0, one command.

For each network (``vgg11``, ``resnet18``; CIFAR-sized 3x32x32 input, IF neuron, sigmoid surrogate
alpha 4), T, precision (``fp32``, ``bf16`` autocast) and mode (``eager``, ``compiled``): the
lightning-snn network and its SpikingJelly twin (``bench/sj_models.py``: same layers, weights
copied) first compute the loss and gradients of one batch, which must agree (fp32, TF32 off),
then both time the same training step (forward, cross-entropy of the time-mean, backward, SGD
step) alternately in this process: ``--warmup`` steps, then ``--repeats`` runs of ``--iters``
steps (CUDA events on a GPU, ``perf_counter`` on CPU), median per step. Peak memory of one step:
``torch.cuda.max_memory_allocated`` above what was allocated before it on a GPU; on CPU the peak
of the tensors the step allocates (``lightning_snn.profiling.TensorMemoryTracker``, eager only).
Then the other gradient strategies at the same sizes, lightning-snn only: ``ottt_a`` and ``dsr``
on the first network, ``ide`` on ``cifarnet_f``.

Results go to ``--out`` (``bench/results/``): ``speed.json`` (written after every measurement, so
a run cut short keeps what it measured), ``speed.md`` (tables) and ``speed.png`` (images/s
against T, one line per framework / back end / precision / mode).

    python bench/speed.py                          # full: GPU if present
    python bench/speed.py --quick                  # CPU-sized: narrow nets, small batch, T 4 8
    python bench/speed.py --networks vgg11 --T 4 8 16 32 --precisions fp32 --modes eager compiled
    python bench/speed.py --backend triton --compile   # neuron back end / SNNModule(compile=True)

``--backend`` sets ``NeuronConfig.backend`` and ``--compile`` makes the compiled mode use
``SNNModule(compile=True)``, when the installed lightning-snn has them; without them the compiled
mode is ``torch.compile`` of the network (``nn.Module.compile``) for both frameworks.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, run from anywhere

from lightning_snn.module import SNNModule  # noqa: E402
from lightning_snn.neurons import NeuronConfig  # noqa: E402
from lightning_snn.profiling import TensorMemoryTracker  # noqa: E402

HAS_BACKEND = "backend" in {f.name for f in dataclasses.fields(NeuronConfig)}
HAS_COMPILE = "compile" in inspect.signature(SNNModule.__init__).parameters
CIFARNET_F = (128, 256, 512, 1024, 512)


# ------------------------------------------------------------------------------ building
def build_module(args: argparse.Namespace, network: str, strategy: str, T: int,
                 compile_module: bool = False) -> SNNModule:
    """A lightning-snn module, seeded, on the device (CPU-sized with ``--width`` < 1)."""
    torch.manual_seed(0)
    neuron_kw: dict[str, Any] = dict(threshold=1.0, leak=1.0, surrogate="sigmoid", surrogate_alpha=4.0)
    if args.backend is not None:
        neuron_kw["backend"] = args.backend
    if network == "cifarnet_f":
        net_args = {"channels": [max(4, int(c * args.width)) for c in CIFARNET_F]}
        network = "multilayer_f"
    else:
        net_args = {"width": args.width}
    kw: dict[str, Any] = dict(network_args=net_args, neuron=NeuronConfig(**neuron_kw), strategy=strategy,
                              T=T, lr=0.01, scheduler="constant")
    if compile_module:
        kw["compile"] = True
    module = SNNModule(network, num_classes=10, input_shape=(3, 32, 32), **kw)
    if "configure_model" in SNNModule.__dict__:
        module.configure_model()  # what the Trainer would call before training
    return module.to(args.device).train()


def compiled(net: torch.nn.Module) -> torch.nn.Module:
    net.compile()
    return net


class Runner:
    """One framework's training step on one model: ``step(x, y)`` -> loss (not synchronised)."""

    def __init__(self, label: str, params: Any, fwd_loss: Callable, manual: Callable | None = None):
        self.label = label
        self.params = [p for p in params if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=0.01, momentum=0.9)
        self.fwd_loss, self.manual = fwd_loss, manual

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.opt.zero_grad(set_to_none=True)
        loss = self.fwd_loss(x, y)
        loss.backward()
        return loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                               for p in self.params]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        if self.manual is not None:  # a strategy with its own backward passes (OTTT)
            loss = self.manual(x, y)
        else:
            loss = self.fwd_loss(x, y)
            loss.backward()
        self.opt.step()
        return loss.detach()


def lsnn_runner(module: SNNModule, strategy: str) -> Runner:
    def fwd_loss(x, y):
        return module.strategy.train_step(module.net, x, y, module.loss, backward=None)[0]

    manual = None
    if module.strategy.online:  # per-step backward passes inside the strategy's own loop
        def manual(x, y):
            return module.strategy.train_step(module.net, x, y, module.loss)[0]
    return Runner("lightning-snn", module.parameters(), fwd_loss, manual)


def sj_runner(sj_net: torch.nn.Module, T: int) -> Runner:
    def fwd_loss(x, y):
        xs = x.unsqueeze(0).repeat(T, *([1] * x.dim()))  # direct encoding, as SpikingJelly's examples
        return F.cross_entropy(sj_net(xs).mean(0), y)

    return Runner("spikingjelly", sj_net.parameters(), fwd_loss)


# ------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_equal(a: Runner, b: Runner, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Loss and gradients of one batch in fp32 (TF32 off); raises if they differ."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        la, ga = a.grads(x, y)
        lb, gb = b.grads(x, y)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    if len(ga) != len(gb):
        raise AssertionError(f"{len(ga)} vs {len(gb)} parameter tensors")
    loss_rel = float((la - lb).abs() / lb.abs().clamp_min(1e-12))
    grad_rel = max(float((g1 - g2).norm() / g2.norm().clamp_min(1e-12)) for g1, g2 in zip(ga, gb))
    # a rare spike that flips between two summation orders moves a gradient by ~1e-4 of its norm;
    # a wrong scale, sign or missing term moves it by O(1)
    if not (loss_rel < 1e-4 and grad_rel < 1e-2):
        raise AssertionError(f"{a.label} and {b.label} disagree: loss rel {loss_rel:.3g}, "
                             f"max gradient rel {grad_rel:.3g}")
    return {"loss_rel_diff": loss_rel, "max_grad_rel_diff": grad_rel}


def time_steps(r: Runner, x, y, n: int, device: torch.device, autocast) -> float:
    """Seconds per step over ``n`` steps (two synchronisations, none per step)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with autocast():
            for _ in range(n):
                r.step(x, y)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    with autocast():
        for _ in range(n):
            r.step(x, y)
    return (time.perf_counter() - t0) / n


def peak_memory(r: Runner, x, y, device: torch.device, autocast, mode: str) -> int | None:
    """Peak bytes one step allocates above what was allocated before it."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with autocast():
            r.step(x, y)
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    if mode != "eager":
        return None  # the tracker sees eager operators only
    with TensorMemoryTracker() as mem, autocast():
        r.step(x, y)
    return mem.peak


def measure(runners: list[Runner], x, y, args, autocast, mode: str) -> list[dict[str, Any]]:
    """Warm-up, then the runners alternate for ``--repeats`` runs; median time per step each."""
    dev = args.device
    t_compile = []
    for r in runners:  # the first steps of a compiled model compile it
        _sync(dev)
        t0 = time.perf_counter()
        with autocast():
            for _ in range(args.warmup):
                r.step(x, y)
        _sync(dev)
        t_compile.append(time.perf_counter() - t0)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(args.repeats):
        for i, r in enumerate(runners):
            times[i].append(time_steps(r, x, y, args.iters, dev, autocast))
    out = []
    for r, ts, tc in zip(runners, times, t_compile):
        med = statistics.median(ts)
        out.append({"framework": r.label, "ms_per_step": 1e3 * med, "ms_runs": [1e3 * t for t in ts],
                    "images_per_s": x.shape[0] / med, "warmup_s": tc,
                    "peak_mib": _mib(peak_memory(r, x, y, dev, autocast, mode))})
    return out


def _mib(b: int | None) -> float | None:
    return None if b is None else b / 2**20


# ------------------------------------------------------------------------------ the grid
def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def _batch(args, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, 32, 32, generator=g) * 2  # enough drive for every layer to fire
    return x.to(device), torch.randint(0, 10, (args.batch,), generator=g).to(device)


def run_bptt_cell(args, network: str, T: int, precision: str, mode: str) -> list[dict[str, Any]]:
    from sj_models import to_spikingjelly

    x, y = _batch(args, args.device)
    module = build_module(args, network, "bptt", T)
    sj = to_spikingjelly(module.net).to(args.device).train()
    if mode == "compiled":
        if args.compile and HAS_COMPILE:
            state = module.state_dict()
            module = build_module(args, network, "bptt", T, compile_module=True)
            module.load_state_dict(state)
        else:
            compiled(module.net)
        compiled(sj)
    a, b = lsnn_runner(module, "bptt"), sj_runner(sj, T)
    check = check_equal(a, b, x, y)
    rows = measure([a, b], x, y, args, _autocast(args.device, precision), mode)
    for r in rows:
        r.update(check)
    return rows


def run_strategy_cell(args, strategy: str, T: int, precision: str) -> list[dict[str, Any]]:
    network = "cifarnet_f" if strategy == "ide" else args.strategy_network
    x, y = _batch(args, args.device)
    module = build_module(args, network, strategy, T)
    rows = measure([lsnn_runner(module, strategy)], x, y, args, _autocast(args.device, precision), "eager")
    for r in rows:
        r["network"] = network
    return rows


def sj_selected() -> dict[str, str]:
    """The IF implementation SpikingJelly picked per CUDA device and execution (read after use;
    private state of SpikingJelly 2.0.0, empty if it is not there)."""
    try:
        from spikingjelly._ops import if_

        sel = if_._selection
        found = {f"eager cuda:{k}": v.name for k, v in sel._selections.items()}
        found.update({f"compile cuda:{k}": v.name for k, v in sel._compiled_selections.items()})
        return found
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}


def backend_label(args) -> str:
    if HAS_BACKEND:
        return args.backend or NeuronConfig().backend  # type: ignore[attr-defined]
    return "torch"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", nargs="*", default=["vgg11", "resnet18"], choices=["vgg11", "resnet18"],
                   help="BPTT against SpikingJelly on these (none: skip the comparison)")
    p.add_argument("--strategy-network", default="vgg11", choices=["vgg11", "resnet18"],
                   help="network of ottt_a and dsr (ide runs cifarnet_f)")
    p.add_argument("--T", nargs="+", type=int, default=[4, 8, 16, 32])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (CPU-sized runs)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--strategies", nargs="*", default=["ottt_a", "dsr", "ide"],
                   choices=["ottt_a", "dsr", "ide"], help="lightning-snn only, eager")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per framework (median)")
    p.add_argument("--backend", default=None, help="NeuronConfig.backend (auto|torch|triton) when it exists")
    p.add_argument("--compile", action="store_true",
                   help="compiled mode through SNNModule(compile=True) when it exists (adds 'compiled' to --modes)")
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized: width 0.125, batch 8, T 4 8, eager, 1 warm-up, 5 x 3 steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.batch, args.T, args.modes = 0.125, 8, [4, 8], ["eager"]
        args.warmup, args.iters, args.repeats = 1, 3, 5
    if args.compile and "compiled" not in args.modes:
        args.modes.append("compiled")
    if args.backend is not None and not HAS_BACKEND:
        p.error(f"--backend {args.backend}: this lightning-snn has no NeuronConfig.backend "
                "(leave --backend out: the neurons run the torch loop)")
    if any(t <= 0 for t in args.T) or args.batch <= 0 or not args.width > 0:
        p.error(f"T, batch and width must be positive; got T={args.T}, batch={args.batch}, width={args.width}")
    args.device = torch.device(args.device)

    import spikingjelly

    env = {
        "device": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu",
        "torch": torch.__version__, "spikingjelly": getattr(spikingjelly, "__version__", "2.0.0"),
        "lsnn_backend": backend_label(args), "lsnn_compile_arg": HAS_COMPILE,
        "sj_backend": "auto (Triton on CUDA)" if args.device.type == "cuda" else "torch",
        "config": {k: str(v) if isinstance(v, (Path, torch.device)) else v for k, v in vars(args).items()},
    }
    results: dict[str, Any] = {"env": env, "rows": [], "errors": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (args.out / "speed.json").write_text(json.dumps(results, indent=2))

    save()  # a run stopped before its first measurement still names its machine and config
    cells: list[tuple[str, Callable[[], list[dict[str, Any]]], dict[str, Any]]] = []
    for mode in args.modes:
        for precision in args.precisions:
            for network in args.networks:
                for T in args.T:
                    meta = dict(network=network, strategy="bptt", T=T, precision=precision, mode=mode)
                    cells.append(("bptt", lambda n=network, T=T, pr=precision, m=mode:
                                  run_bptt_cell(args, n, T, pr, m), meta))
    for strategy in args.strategies:
        for precision in args.precisions:
            for T in args.T:
                meta = dict(strategy=strategy, T=T, precision=precision, mode="eager")
                cells.append((strategy, lambda s=strategy, T=T, pr=precision:
                              run_strategy_cell(args, s, T, pr), meta))

    # untrained weights: IDE's adjoint solver often runs to its iteration cap, which is timed as is
    warnings.filterwarnings("ignore", message="IDE adjoint solver", category=RuntimeWarning)
    for _, fn, meta in cells:
        t0 = time.perf_counter()
        try:
            rows = fn()
        except AssertionError:
            raise  # frameworks that disagree: no timing is worth reporting
        except Exception as e:  # noqa: BLE001 - one failing cell (e.g. a compile error) is reported
            results["errors"].append({**meta, "error": f"{type(e).__name__}: {e}",
                                      "trace": traceback.format_exc(limit=3)})
            print(f"[speed] {meta}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            save()
            continue
        for r in rows:
            results["rows"].append({**meta, **r})
            print(f"[speed] {meta['strategy']} {r.get('network', meta.get('network'))} T={meta['T']} "
                  f"{meta['precision']} {meta['mode']} {r['framework']}: {r['images_per_s']:.1f} img/s, "
                  f"{r['ms_per_step']:.2f} ms/step, peak {r['peak_mib']} MiB "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        save()

    from speed_report import write_plot, write_table

    picked = sj_selected()
    if picked:
        env["sj_selected"] = picked
        env["sj_backend"] = "/".join(sorted(set(picked.values())))

    write_table(results, args.out / "speed.md")
    try:
        write_plot(results, args.out / "speed.png")
    except ImportError as e:  # a GPU node without matplotlib: plot later with bench/speed_report.py
        print(f"[speed] no plot ({e}); run: python bench/speed_report.py {args.out / 'speed.json'}",
              file=sys.stderr)
    save()
    print((args.out / "speed.md").read_text())
    return results


if __name__ == "__main__":
    main()
