"""OTTT: the trace-gradient synapse, the three-factor weight gradient, the special case where OTTT
equals BPTT, OTTT_A / OTTT_O through Lightning's manual optimisation, and 2-process DDP."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_snn.layers import TimeDistributed, TraceConv2d, TraceLinear, ScaledWSConv2d
from lightning_snn.loss import LossConfig, SpikingLoss
from lightning_snn.models import MODELS, SpikingNet
from lightning_snn.module import SNNModule
from lightning_snn.neurons import LIF, NeuronConfig
from lightning_snn.strategies import STRATEGIES
from procs import child_env

TOL = dict(rtol=1e-9, atol=1e-11)
SCRIPT = Path(__file__).parent / "scripts" / "ddp_ottt.py"


@pytest.mark.parametrize("kind", ["linear", "conv", "ws_conv"])
def test_trace_synapse_forward_is_op_of_input_and_weight_grad_uses_trace(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer, shape = TraceLinear(5, 3).double(), (4, 5)
    elif kind == "conv":
        layer, shape = TraceConv2d(2, 3, 3, stride=2, padding=1).double(), (4, 2, 7, 7)
    else:
        layer, shape = ScaledWSConv2d(2, 3, 3, padding=1).double(), (4, 2, 6, 6)
    prev = torch.rand(shape, dtype=torch.float64)
    x = (torch.rand(shape, dtype=torch.float64) > 0.5).double().requires_grad_()
    g = torch.randn_like(layer(x))
    layer.trace_leak = 0.6
    layer(prev)  # step 1: trace = prev
    y = layer(x)  # step 2: trace = 0.6 prev + x
    trace = 0.6 * prev + x.detach()
    torch.testing.assert_close(layer.trace, trace, **TOL)
    ref_layer = copy.deepcopy(layer)
    ref_layer.trace_leak = None
    torch.testing.assert_close(y, ref_layer(x), **TOL)  # forward = op(spike)
    y.backward(g)
    # reference: autograd of the plain op at the trace for W, at the input for x
    xr = x.detach().clone().requires_grad_()
    ref_layer.zero_grad()
    (ref_layer(trace) * g).sum().backward()
    torch.testing.assert_close(layer.weight.grad, ref_layer.weight.grad, **TOL)
    torch.testing.assert_close(layer.bias.grad, ref_layer.bias.grad, **TOL)
    if kind == "ws_conv":
        torch.testing.assert_close(layer.gain.grad, ref_layer.gain.grad, **TOL)
    (gx,) = torch.autograd.grad((ref_layer(xr) * g).sum(), xr)
    torch.testing.assert_close(x.grad, gx, **TOL)


def small_mlp(leak=0.6, **kw):
    cfg = NeuronConfig(threshold=0.5, leak=leak, surrogate="sigmoid", surrogate_alpha=2.0, **kw)
    return MODELS.build("mlp", input_shape=(6,), num_classes=3, neuron=cfg, hidden=(8, 5),
                        batch_norm=False).double()


@pytest.mark.parametrize("T", [1, 4])
def test_ottt_weight_gradient_is_postsynaptic_error_times_trace(T):
    """dW = sum_t delta_t^T a_t, delta_t = dL_t/dI_t at the layer's output, a_t = lambda a_{t-1} + s_t."""
    torch.manual_seed(1)
    net, leak = small_mlp(), 0.6
    x, y = torch.randn(4, 6, dtype=torch.float64) * 2, torch.tensor([0, 1, 2, 1])
    linears = [m for m in net.modules() if isinstance(m, TraceLinear)]
    record = {id(m): {"x": [], "d": []} for m in linears}

    def hook(mod, inp, out):
        record[id(mod)]["x"].append(inp[0].detach().clone())
        out.register_hook(lambda g: record[id(mod)]["d"].append(g.clone()))

    handles = [m.register_forward_hook(hook) for m in linears]
    STRATEGIES.build("ottt_a", T=T).train_step(net, x, y, SpikingLoss(per_step=True, mse_weight=0.3))
    for h in handles:
        h.remove()
    nonzero = 0
    for i, m in enumerate(linears):
        xs, ds = record[id(m)]["x"], record[id(m)]["d"]
        assert len(xs) == len(ds) == T
        if i == 0:  # input layer: no trace, dW = sum_t delta_t^T x_t
            expected = sum(d.t() @ xi for d, xi in zip(ds, xs))
        else:
            a, expected = torch.zeros_like(xs[0]), 0
            for d, s in zip(ds, xs):
                a = leak * a + s
                expected = expected + d.t() @ a
        torch.testing.assert_close(m.weight.grad, expected, **TOL)
        torch.testing.assert_close(m.bias.grad, sum(d.sum(0) for d in ds), **TOL)
        nonzero += int(m.weight.grad.abs().sum() > 0)
    assert nonzero == 3


class OneLayer(SpikingNet):
    """x -> W -> LIF; the spikes are the per-step outputs."""

    def __init__(self, cfg):
        super().__init__()
        self.fc = TimeDistributed(TraceLinear(6, 4, bias=False))
        self.lif = LIF(cfg)

    def forward(self, x):
        return self.lif(self.fc(x))


@pytest.mark.parametrize("leak", [1.0, 0.7])
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
def test_ottt_equals_bptt_for_one_layer_with_detached_reset(leak, surrogate):
    """One layer, reset detached, loss a sum of per-step terms: du_t/dW = sum_tau lambda^(t-tau) x_tau
    is exactly the trace, so the OTTT gradient is BPTT's."""
    torch.manual_seed(2)
    cfg = NeuronConfig(threshold=0.8, leak=leak, surrogate=surrogate, surrogate_alpha=1.0, detach_reset=True)
    net = OneLayer(cfg).double()
    ottt = STRATEGIES.build("ottt_a", T=5, trace_input=True)
    loss = SpikingLoss(per_step=True, mse_weight=0.2)
    x = torch.randn(3, 5, 6, dtype=torch.float64)  # [B, T, C]: a time-varying input
    x = x.unsqueeze(-1).unsqueeze(-1)[..., 0, 0]
    y = torch.tensor([0, 3, 1])
    xs = x.transpose(0, 1)  # [T, B, C]
    ref = copy.deepcopy(net)
    out = ref(xs)  # BPTT: one unrolled graph
    loss(out, y).backward()  # the mean of the per-step losses
    ottt.encode = lambda inp: xs  # feed the same time-varying sequence
    ottt.train_step(net, x, y, loss)
    assert ref.fc[0].weight.grad.abs().sum() > 0
    torch.testing.assert_close(net.fc[0].weight.grad, ref.fc[0].weight.grad, **TOL)
    # with the reset *not* detached the two differ (the theorem's condition matters)
    cfg2 = NeuronConfig(threshold=0.8, leak=leak, surrogate=surrogate, surrogate_alpha=1.0)
    ref2 = OneLayer(cfg2).double()
    ref2.load_state_dict(ref.state_dict())
    out2 = ref2(xs)
    loss(out2, y).backward()
    assert not torch.allclose(ref2.fc[0].weight.grad, ref.fc[0].weight.grad)


def fit_one_batch(strategy, T, net_kwargs, x, y, lr):
    module = SNNModule(
        "mlp", num_classes=3, input_shape=(6,), network_args=net_kwargs,
        neuron=NeuronConfig(threshold=0.5, leak=0.6, surrogate_alpha=2.0), strategy=strategy,
        loss=LossConfig(mse_weight=0.3), T=T, optimizer="sgd", lr=lr, momentum=0.0,
        weight_decay=0.0, scheduler="constant",
    ).double()
    start = copy.deepcopy(module.net)
    trainer = pl.Trainer(accelerator="cpu", max_steps=-1, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=len(x)))
    return start, module, trainer


def test_ottt_a_one_optimiser_step_of_the_sum_of_per_step_gradients():
    torch.manual_seed(3)
    T, lr = 4, 0.5
    x, y = torch.randn(6, 6, dtype=torch.float64) * 2, torch.randint(0, 3, (6,))
    start, module, trainer = fit_one_batch("ottt_a", T, {"hidden": (8, 5), "batch_norm": False}, x, y, lr)
    assert trainer.global_step == 1
    strat = module.strategy
    total = {n: torch.zeros_like(p) for n, p in start.named_parameters()}
    for k in range(T):  # gradient of L_k alone, from a fresh copy
        net = copy.deepcopy(start)
        steps = iter(range(T))
        strat.train_step(net, x, y, module.loss,
                         backward=lambda loss, last: loss.backward() if next(steps) == k else None)
        for n, p in net.named_parameters():
            if p.grad is not None:
                total[n] += p.grad
    for n, p in module.net.named_parameters():
        torch.testing.assert_close(p.detach(), dict(start.named_parameters())[n].detach() - lr * total[n], **TOL)


def test_ottt_o_steps_the_optimiser_every_time_step():
    torch.manual_seed(4)
    T, lr = 3, 0.5
    x, y = torch.randn(6, 6, dtype=torch.float64) * 2, torch.randint(0, 3, (6,))
    start, module, trainer = fit_one_batch("ottt_o", T, {"hidden": (8, 5), "batch_norm": False}, x, y, lr)
    assert trainer.global_step == T
    net = copy.deepcopy(start)
    opt = torch.optim.SGD(net.parameters(), lr=lr)

    def backward(loss, last):
        opt.zero_grad()
        loss.backward()
        opt.step()

    module.strategy.train_step(net, x, y, module.loss, backward)
    for (n, p), q in zip(module.net.named_parameters(), net.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), **TOL)
    # and it is not the accumulated single step
    assert not torch.allclose(module.net.layers[0][1].weight, start.layers[0][1].weight)


def test_ottt_rejects_plain_synapses_after_spikes():
    class Plain(SpikingNet):
        def __init__(self):
            super().__init__()
            self.lif = LIF()
            self.fc = nn.Linear(3, 2)

    with pytest.raises(ValueError, match=r"trace-aware synapses.*\['fc'\]"):
        STRATEGIES.build("ottt_a", T=2).check_model(Plain())


@pytest.mark.slow
def test_ottt_a_under_two_process_ddp_equals_one_process(tmp_path):
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), str(devices), str(out)], env=child_env(),
            cwd=tmp_path, capture_output=True, text=True, timeout=240,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results[devices] = (torch.load(out / "params.pt"), json.loads((out / "calls.json").read_text()))
    one, two = results[1][0], results[2][0]
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-9, atol=1e-11)
    # gradients were all-reduced once per optimiser step (2 batches x 1 bucket), not once per time step
    calls = results[2][1]
    assert calls["steps"] == 2 and calls["allreduce_per_rank"] == [2, 2], calls


# ----------------------------------------------------------------------------- one loss
def test_train_and_val_loss_are_the_same_quantity_under_ottt():
    """The online run's summed per-step losses and the evaluation loss of the plain forward are one
    definition: equal on a model without batch norm (whose online values equal the plain ones)."""
    torch.manual_seed(5)
    m = SNNModule("mlp", num_classes=3, input_shape=(6,), strategy="ottt_a", T=4,
                  network_args={"hidden": (8, 5), "batch_norm": False},
                  neuron=NeuronConfig(threshold=0.5, leak=0.6), loss=LossConfig(mse_weight=0.3)).double()
    assert m.loss.per_step and m.loss.mse_weight == 0.3
    x, y = torch.randn(5, 6, dtype=torch.float64) * 2, torch.tensor([0, 1, 2, 1, 0])
    train, _ = m.strategy.train_step(m.net, x, y, m.loss)
    m.eval()
    with torch.no_grad():
        out = m.strategy.forward(m.net, x)
    val = m.loss(out, y)
    by_hand = sum(0.7 * F.cross_entropy(o, y) + 0.3 * F.mse_loss(o, F.one_hot(y, 3).double())
                  for o in out) / 4
    torch.testing.assert_close(train, val, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(val, by_hand, rtol=1e-12, atol=1e-12)


def test_a_loss_an_online_strategy_cannot_honour_is_a_clear_error():
    with pytest.raises(ValueError, match=r"strategy 'ottt_o' trains on the mean of per-step losses and "
                       r"cannot honour loss.per_step=False"):
        SNNModule("mlp", num_classes=3, input_shape=(6,), strategy="ottt_o", loss=LossConfig(per_step=False))
    with pytest.raises(ValueError, match=r"loss_lambda has moved .* model.loss.mse_weight: 0.05"):
        SNNModule("mlp", num_classes=3, input_shape=(6,), strategy="ottt_a", strategy_args={"loss_lambda": 0.05})
    # whole-sequence strategies take either form
    for per_step in (False, True):
        assert SNNModule("mlp", num_classes=3, input_shape=(6,), loss=LossConfig(per_step=per_step)).loss.per_step is per_step


@pytest.mark.parametrize("per_step", [False, True])
def test_mse_target_constant_is_the_number_asked_for(per_step):
    """``mse_target: 0.5``: l = (1 - lambda) CE + lambda mean((o - 0.5)^2), written out here from
    log-softmax and squares (not 1.0, not the one-hot label)."""
    torch.manual_seed(0)
    out, y, lam = torch.randn(3, 4, 5, dtype=torch.float64), torch.tensor([0, 3, 1, 4]), 0.3

    def term(o: torch.Tensor) -> torch.Tensor:
        ce = -o.log_softmax(-1)[torch.arange(4), y].mean()
        return (1 - lam) * ce + lam * ((o - 0.5) ** 2).mean()

    expected = sum(term(o) for o in out) / 3 if per_step else term(out.mean(0))
    got = SpikingLoss(per_step=per_step, mse_weight=lam, mse_target=0.5)(out, y)
    assert float(got) == pytest.approx(float(expected), rel=1e-12)
