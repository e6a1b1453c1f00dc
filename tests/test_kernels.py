"""Fused neuron kernels (``lightning_snn.kernels``) against the torch loop of ``LIF.forward``.

Without a GPU the Triton kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by
conftest.py before triton is imported); on a CUDA machine the same tests run the compiled kernels.
The reference is the autograd graph of the unrolled torch loop. fp32: spikes bit-equal, potentials
and gradients to 1e-5 relative (the kernels do the same operations in another summation order).
fp16 / bf16: the kernels keep state and arithmetic in fp32, so they equal the fp32 reference on the
same (exactly widened) input up to one rounding of the result to the input dtype.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_snn.kernels import interpreted, kernels_run_on, lif_multistep, neuron_torch
from lightning_snn.kernels.common import SURROGATE_IDS, surrogate_constants
from lightning_snn.layers import TimeDistributed
from lightning_snn.models import MODELS
from lightning_snn.neurons import LIF, NeuronConfig, spike
from lightning_snn.strategies import STRATEGIES
from lightning_snn.strategies.dsr import dsr_dynamics

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ROOT = Path(__file__).resolve().parents[1]
REL = 1e-5  # fp32 tolerance (relative to the largest reference value)
ALPHA = {"sigmoid": 4.0, "atan": 2.0, "rectangle": 1.0, "triangle": 1.5}
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}

KERNELS_RUN = kernels_run_on(torch.empty(0, device=DEV))
if not KERNELS_RUN and os.environ.get("LIGHTNING_SNN_CI") and importlib.util.find_spec("triton") is None:
    pytest.fail("the kernel tests cannot run here: triton is not installed (pip install triton); CI requires "
                "them", pytrace=False)
if not KERNELS_RUN and os.environ.get("LIGHTNING_SNN_CI"):  # set by .ci/run: a silent skip is a failure
    pytest.fail("the kernel tests cannot run here: no CUDA, and TRITON_INTERPRET was not 1 when triton "
                "was imported (is TRITON_INTERPRET=0 exported?); CI requires them", pytrace=False)
pytestmark = pytest.mark.skipif(
    not KERNELS_RUN, reason="the Triton kernels need CUDA or TRITON_INTERPRET=1 before triton is imported")


def assert_rel(actual, expected, rel=REL, rtol=0.0):
    """|actual - expected| <= rtol |expected| + rel * max |expected| (elementwise)."""
    a, e = actual.double(), expected.double()
    bound = rtol * e.abs() + rel * e.abs().max()
    worst = ((a - e).abs() - bound).max()
    assert worst <= 0, f"max excess over tolerance {float(worst):.3g} (scale {float(e.abs().max()):.3g})"


def lif(backend, surrogate="sigmoid", detach_reset=False, trainable=True, leak=0.8, vth=0.8):
    cfg = NeuronConfig(threshold=vth, leak=leak, trainable_threshold=trainable, surrogate=surrogate,
                       surrogate_alpha=ALPHA[surrogate], detach_reset=detach_reset, backend=backend)
    return LIF(cfg).to(DEV)


def inputs(T, *shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, *shape, generator=g) * 0.7 + 0.35  # about a third of the units fire per step
    grad = torch.randn(T, *shape, generator=g)
    return x.to(DEV, dtype), grad.to(DEV, dtype)


def run(layer, x, grad):
    """Spikes and the gradients of <spikes, grad> with respect to x and the threshold."""
    x = x.detach().clone().requires_grad_()
    s = layer(x)
    s.backward(grad)
    gth = layer.threshold.grad if layer.config.trainable_threshold else None
    return s, x.grad, gth


def threshold_grad_scale(x, grad, surrogate="sigmoid", detach_reset=False, leak=0.8, vth=0.8):
    """sum_i |dL/dVth_i| with one threshold per neuron (autograd through the unrolled loop): the
    scale of the sum that makes dL/dVth. Its terms have both signs, so two fp32 summation orders
    differ by a few eps of this scale, not of the (possibly much smaller) total."""
    th = torch.full(x.shape[1:], vth, device=x.device, requires_grad=True)
    v, out = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        h = leak * v + x[t]
        s = spike(h - th, surrogate, ALPHA[surrogate])
        v = h - th * (s.detach() if detach_reset else s)
        out.append(s)
    (torch.stack(out) * grad).sum().backward()
    return float(th.grad.abs().sum())


def assert_threshold_grad(actual, expected, scale):
    assert abs(float(actual) - float(expected)) <= REL * scale, (float(actual), float(expected), scale)


def compare(x, grad, **opts):
    s_ref, gx_ref, gth_ref = run(lif("torch", **opts), x, grad)
    s, gx, gth = run(lif("triton", **opts), x, grad)
    assert s.dtype == x.dtype and s.shape == x.shape
    assert torch.equal(s, s_ref)  # spikes are exactly 0 / 1: no rounding involved
    assert 0.05 < s.float().mean() < 0.95
    assert_rel(gx, gx_ref)
    if gth_ref is not None:
        opts.pop("trainable", None)
        assert_threshold_grad(gth, gth_ref, threshold_grad_scale(x.float(), grad.float(), **opts))
    return s


# ------------------------------------------------------------------------ every option, T, blocks
@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "rectangle", "triangle"])
@pytest.mark.parametrize("detach_reset,trainable,leak",
                         [(False, True, 1.0), (True, True, 0.8), (False, False, 0.8), (True, False, 1.0)])
def test_matches_torch_loop(T, surrogate, detach_reset, trainable, leak):
    # 2 x 650 = 1300 neurons: two programs of 1024, the second one masked
    x, grad = inputs(T, 2, 650, seed=T)
    compare(x, grad, surrogate=surrogate, detach_reset=detach_reset, trainable=trainable, leak=leak)


def test_potential_equals_the_charge_equation():
    """``h`` the forward saves for backward: h[t] = lambda v[t-1] + x[t], v[t] = h[t] - Vth s[t]."""
    x, _ = inputs(5, 3, 11)
    vth = torch.tensor(0.8, device=DEV)
    s, h = torch.ops.lightning_snn.lif_multistep(x, vth, 0.7, 1.0, 0, 4.0, False, True)
    v, hs, ss = torch.zeros_like(x[0]), [], []
    for t in range(5):
        ht = 0.7 * v + x[t]
        st = (ht >= 0.8).float()
        v = ht - 0.8 * st
        hs.append(ht)
        ss.append(st)
    assert torch.equal(s, torch.stack(ss))
    assert_rel(h, torch.stack(hs))


# ------------------------------------------------------------------------------ memory layouts
@pytest.mark.parametrize("layout,T", [("transposed", 3), ("transposed", 1), ("time_strided", 3),
                                      ("expanded", 3)])
def test_non_contiguous_input(layout, T):
    base, grad = inputs(T, 9, 40, seed=5)
    if layout == "transposed":  # x[t] is not one packed block: made contiguous once
        x, grad = base.transpose(1, 2), grad.transpose(1, 2)
    elif layout == "time_strided":  # x[t] packed (360 values), rows 400 apart: read in place
        x = torch.cat([base, base[:, :1]], 1)[:, :9]
    else:  # a direct-encoded input: the same image at every step (stride 0 in time)
        x = base[0].unsqueeze(0).expand(T, -1, -1)
    assert not x.is_contiguous()
    compare(x, grad)


def test_conv_activation_5d():
    """[T, B, C, H, W] out of a conv + BN on the folded [T*B, ...] view; every parameter's gradient."""
    torch.manual_seed(0)

    def net(backend):
        torch.manual_seed(1)
        return nn.Sequential(TimeDistributed(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)),
                             lif(backend, surrogate="atan")).to(DEV)

    x, _ = inputs(4, 2, 2, 5, 7, seed=2)
    grads = {}
    for backend in ("torch", "triton"):
        m = net(backend)
        xr = x.clone().requires_grad_()
        s = m(xr)
        assert s.shape == (4, 2, 3, 5, 7)
        (s * torch.linspace(-1, 2, 7, device=DEV)).sum().backward()
        grads[backend] = [s, xr.grad] + [p.grad for p in m.parameters()]
    assert torch.equal(grads["torch"][0], grads["triton"][0])
    for ref, got in zip(grads["torch"][1:], grads["triton"][1:]):
        assert_rel(got, ref)


# ------------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("trainable", [True, False])
def test_low_precision_equals_fp32_math(dtype, trainable):
    """bf16 / fp16 input: the fp32 reference on the same values, up to one rounding of dL/dx."""
    x, grad = inputs(4, 2, 650, seed=3, dtype=dtype)
    s_ref, gx_ref, gth_ref = run(lif("torch", trainable=trainable), x.float(), grad.float())
    s, gx, gth = run(lif("triton", trainable=trainable), x, grad)
    assert s.dtype == gx.dtype == dtype
    assert torch.equal(s.float(), s_ref)
    assert_rel(gx, gx_ref, rtol=UNIT_ROUNDOFF[dtype])
    if trainable:
        assert gth.dtype == torch.float32  # reduced in fp32
        assert_threshold_grad(gth, gth_ref, threshold_grad_scale(x.float(), grad.float()))


def saved_bytes(layer, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x.detach().clone().requires_grad_())
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("trainable", [True, False])
def test_saves_no_more_than_the_torch_loop(dtype, trainable):
    """What autograd keeps for backward: one [T, N] tensor (h in fp32, the input itself in bf16)."""
    x, _ = inputs(6, 4, 100, dtype=dtype)
    fused = saved_bytes(lif("triton", trainable=trainable), x)
    assert fused <= x.numel() * x.element_size() + 8  # + the threshold
    assert fused <= saved_bytes(lif("torch", trainable=trainable), x)


# -------------------------------------------------------------------- threshold floor, DSR, op
def test_threshold_floor_is_applied_before_the_kernel():
    layer = lif("triton")
    with torch.no_grad():
        layer.threshold.fill_(-1.0)  # an optimiser step drove it below its floor
    x, grad = inputs(3, 50)
    s, _, gth = run(layer, x, grad)
    assert layer.threshold.item() == pytest.approx(1e-2)
    ref = lif("torch")
    with torch.no_grad():
        ref.threshold.fill_(1e-2)
    s_ref, _, gth_ref = run(ref, x, grad)
    assert torch.equal(s, s_ref)
    assert_threshold_grad(gth, gth_ref, threshold_grad_scale(x, grad, vth=1e-2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("leak,alpha,spike_value", [(1.0, 0.5, "threshold"), (0.8, 1.0, "unit")])
def test_dsr_forward_on_the_kernel(dtype, leak, alpha, spike_value):
    """DSR fires at alpha * Vth and subtracts Vth: the same forward kernel, fire level apart."""
    T = 5
    x, grad = inputs(T, 300, seed=4, dtype=dtype)
    x = x * 1.5
    out = {}
    for backend in ("torch", "triton"):
        layer = lif(backend, leak=leak, vth=0.9).to(dtype)
        xr = x.clone().requires_grad_()
        o = dsr_dynamics(layer, xr, alpha=alpha, spike_value=spike_value)
        o.backward(grad)
        out[backend] = (o, xr.grad, layer.threshold.grad)
    assert torch.equal(out["triton"][0], out["torch"][0])
    for ref, got in zip(out["torch"][1:], out["triton"][1:]):
        assert_rel(got, ref)


def test_torch_twin_of_the_kernels_matches_autograd():
    """The op's torch loop (CPU without the interpreter) against the autograd reference."""
    x, grad = inputs(4, 3, 70, seed=6)
    for surrogate in ("sigmoid", "atan", "rectangle", "triangle"):
        for detach_reset in (False, True):
            s_ref, gx_ref, gth_ref = run(lif("torch", surrogate, detach_reset, leak=0.9), x, grad)
            vth = torch.tensor(0.8, device=DEV)
            s, h = neuron_torch.lif_forward(x, vth, 0.9, 1.0, True)
            c0, c1 = surrogate_constants(SURROGATE_IDS[surrogate], ALPHA[surrogate])
            for saved, recompute in ((h, False), (x, True)):
                gx, gth = neuron_torch.lif_backward(grad, saved, vth, 0.9, SURROGATE_IDS[surrogate],
                                                    c0, c1, detach_reset, recompute, True)
                assert torch.equal(s, s_ref)
                assert_rel(gx, gx_ref)
                assert_threshold_grad(gth, gth_ref, threshold_grad_scale(
                    x, grad, surrogate, detach_reset, leak=0.9))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"backend 'cuda'.*valid choices"):
        NeuronConfig(backend="cuda")
    vth = torch.tensor(1.0, device=DEV)
    with pytest.raises(ValueError, match="int64"):
        lif_multistep(torch.ones(2, 3, dtype=torch.int64, device=DEV), vth, 1.0)
    with pytest.raises(ValueError, match=r"one value per layer.*\(2,\)"):
        lif_multistep(torch.ones(2, 3, device=DEV), torch.ones(2, device=DEV), 1.0)
    with pytest.raises(ValueError, match="unknown surrogate 'relu'"):
        lif_multistep(torch.ones(2, 3, device=DEV), vth, 1.0, surrogate="relu")


SCRIPT = """
import torch
from lightning_snn.kernels import interpreted, kernels_run_on, lif_multistep
from lightning_snn.neurons import LIF, NeuronConfig, spike
assert not interpreted()
x = torch.randn(3, 4, 5) + 0.5
# auto on CPU: the torch loop; the op itself runs its torch twin there
assert torch.equal(LIF(NeuronConfig(backend="auto"))(x), lif_multistep(x, torch.tensor(1.0), 1.0))
assert not kernels_run_on(x)
try:
    LIF(NeuronConfig(backend="triton"))(x)
except RuntimeError as e:
    print("ERROR:", e)

# the kernels also compile for a GPU (Hopper, sm_90) through Triton's real back end, to PTX + cubin
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lightning_snn.kernels.neuron_triton import lif_backward_kernel, lif_forward_kernel
opts = {"num_warps": 4, "enable_fp_fusion": False}
for xt in ("fp32", "bf16"):
    sig = dict(x_ptr="*" + xt, s_ptr="*" + xt, h_ptr="*fp32", vth_ptr="*fp32", T="i32", N="i32",
               x_stride_t="i32", leak="fp32", fire_scale="fp32", SAVE_H="constexpr", BLOCK="constexpr")
    k = triton.compile(ASTSource(lif_forward_kernel, sig, dict(SAVE_H=xt == "fp32", BLOCK=1024)),
                       target=GPUTarget("cuda", 90, 32), options=opts)
    assert "cubin" in k.asm and "fma." not in k.asm["ptx"]  # lambda v + x rounds as in torch
    sig = dict(gs_ptr="*" + xt, h_ptr="*fp32", x_ptr="*" + xt, gx_ptr="*" + xt, gvth_ptr="*fp32",
               vth_ptr="*fp32", T="i32", N="i32", x_stride_t="i32", last="i64", leak="fp32", c0="fp32",
               c1="fp32", SURROGATE="constexpr", DETACH_RESET="constexpr", RECOMPUTE="constexpr",
               VTH_GRAD="constexpr", BLOCK="constexpr")
    const = dict(SURROGATE=1, DETACH_RESET=xt == "bf16", RECOMPUTE=xt == "bf16", VTH_GRAD=True, BLOCK=1024)
    k = triton.compile(ASTSource(lif_backward_kernel, sig, const), target=GPUTarget("cuda", 90, 32),
                       options=opts)
    assert "cubin" in k.asm
print("COMPILED")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path without the interpreter")
def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error_and_kernels_compile_for_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "ERROR: model.neuron.backend='triton' cannot run on a cpu tensor" in out.stdout
    assert "TRITON_INTERPRET=1" in out.stdout and "'auto' or 'torch'" in out.stdout
    assert "COMPILED" in out.stdout


def test_interpreter_is_on_without_cuda():
    assert interpreted() != torch.cuda.is_available()


# ------------------------------------------------------------------------------ torch.compile
def capture_backend(graphs):
    """A torch.compile back end that records the forward and backward FX graphs AOTAutograd makes
    and runs them as they are."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def keep(kind):
        def compiler(gm, example_inputs):
            graphs.append((kind, gm))
            return make_boxed_func(gm.forward)
        return compiler

    return aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw"))


def conv_net(backend, T, trainable=True):
    torch.manual_seed(0)
    cfg = NeuronConfig(threshold=1.0, leak=0.9, trainable_threshold=trainable, backend=backend)
    net = MODELS.build("convnet", input_shape=(1, 8, 8), num_classes=3, neuron=cfg,
                       channels=(4, "M"), hidden=16).to(DEV)
    return net, STRATEGIES.build("bptt", T=T)


def ops_in(gm):
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def compiled_graphs(backend, T):
    """Forward / backward graphs of a compiled conv net, and whether it matches eager."""
    torch._dynamo.reset()
    net, strat = conv_net(backend, T)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(DEV)
    strat.forward(net, x).square().sum().backward()
    eager = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    graphs = []
    net.compile(backend=capture_backend(graphs))
    out = strat.forward(net, x)
    out.square().sum().backward()
    for ref, p in zip(eager, net.parameters()):
        assert_rel(p.grad, ref)
    torch._dynamo.reset()
    return {kind: gm for kind, gm in graphs}, len(graphs), len(net.spiking_layers())


def test_compiled_graph_has_one_node_per_neuron_and_does_not_grow_with_t():
    sizes = {}
    for T in (2, 6):
        graphs, count, layers = compiled_graphs("triton", T)
        assert count == 2, "one forward and one backward graph: no graph break"
        fw, bw = ops_in(graphs["fw"]), ops_in(graphs["bw"])
        assert fw.count("lightning_snn.lif_multistep.default") == layers
        assert bw.count("lightning_snn.lif_multistep_backward.default") == layers
        sizes[T] = (len(fw), len(bw))
    assert sizes[2] == sizes[6], sizes
    # the torch loop, compiled, is unrolled over T: the same count sees the graph grow
    torch_fw = {T: len(ops_in(compiled_graphs("torch", T)[0]["fw"])) for T in (2, 6)}
    assert torch_fw[6] > torch_fw[2] + 3 * 4, torch_fw


@pytest.mark.slow
def test_snn_module_compiled_with_inductor_equals_eager():
    """``model.compile: true``: inductor's forward and gradients equal eager on a conv net."""
    from lightning_snn.module import SNNModule

    torch._dynamo.reset()
    cfg = NeuronConfig(threshold=1.0, leak=0.9, trainable_threshold=True, backend="triton")
    args = dict(network="convnet", num_classes=3, input_shape=(1, 8, 8), neuron=cfg, T=4,
                network_args=dict(channels=(4, "M"), hidden=16))
    torch.manual_seed(0)
    eager = SNNModule(**args).to(DEV)
    torch.manual_seed(0)
    compiled = SNNModule(**args, compile=True).to(DEV)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2)).to(DEV)
    y = torch.tensor([0, 1, 2, 0, 1, 2], device=DEV)
    results = []
    for module in (eager, compiled):
        out = module.strategy.forward(module.net, x)
        module.loss(out, y).backward()
        results.append([out] + [p.grad for p in module.net.parameters()])
    # inductor sums BN statistics and matmuls in other orders: a few fp32 eps of the largest value
    # (measured <= 2e-6), no spike flips; a wrong gradient path would be off by O(1)
    for ref, got in zip(*results):
        assert_rel(got, ref)
    torch._dynamo.reset()
