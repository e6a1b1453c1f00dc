"""IDE: implicit gradients against unrolled autograd and finite differences; solvers; batch norm."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from lightning_snn.models import MODELS
from lightning_snn.models.feedback import FeedbackSNN
from lightning_snn.module import SNNModule
from lightning_snn.neurons import NeuronConfig
from lightning_snn.solvers import SOLVERS
from lightning_snn.strategies import STRATEGIES

TINY = {
    "f_mlp": dict(input_shape=(1, 4, 4), hidden=12),
    "f_conv": dict(input_shape=(1, 8, 8), channels=3, kernel_size=3, input_padding=1),
    "multilayer_f": dict(input_shape=(3, 8, 8), channels=(4, 5, 6, 5, 4)),
}


def tiny(name, leak=1.0, dropout=0.0, threshold=2.0, **over):
    torch.manual_seed(0)
    kw = {**TINY[name], **over}
    shape = kw.pop("input_shape")
    net = MODELS.build(name, input_shape=shape, num_classes=3, dropout=dropout,
                       neuron=NeuronConfig(threshold=threshold, leak=leak), **kw).double()
    for bn in net.hidden_bns:  # keep the multilayer map contractive in the test
        torch.nn.init.constant_(bn.weight, 0.5)
    x = torch.rand(4, *shape, dtype=torch.float64) * 3
    return net, x, torch.tensor([0, 1, 2, 1])


def fixed_point_of_map(net, ctx, iters=300):
    with torch.no_grad():
        a = torch.zeros_like(net.simulate(ctx, bn="batch"))
        for _ in range(iters):
            a = net.equilibrium_map(a, ctx, bn="batch")
        assert (net.equilibrium_map(a, ctx, bn="batch") - a).abs().max() < 1e-12
    return a


def params_of(net):
    return [p for p in net.parameters() if p.requires_grad]


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("leak, dropout", [(1.0, 0.0), (0.9, 0.0), (1.0, 0.3)])
def test_implicit_gradient_equals_unrolled_rate_iteration(name, leak, dropout):
    net, x, y = tiny(name, leak, dropout)
    ide = STRATEGIES.build("ide", T=5, solver="broyden", max_iter=100, tol=1e-12)
    ctx = net.prepare(ide.encode(x))
    a_star = fixed_point_of_map(net, ctx)

    loss = F.cross_entropy(net.readout(ide.implicit(net, ctx, a_star)), y)
    implicit = torch.autograd.grad(loss, params_of(net), retain_graph=True, allow_unused=True)
    assert ide.last_info.converged and ide.last_info.residual <= 1e-12

    a = torch.zeros_like(a_star)
    for _ in range(150):  # autograd through the rate iteration run to convergence
        a = net.equilibrium_map(a, ctx, bn="batch")
    unrolled = torch.autograd.grad(F.cross_entropy(net.readout(a), y), params_of(net), allow_unused=True)

    nonzero = 0
    for gi, gu in zip(implicit, unrolled):
        if gu is None:
            assert gi is None or gi.abs().max() == 0
            continue
        # relative error <= 1e-4 (an absolute floor for gradients that vanish exactly, e.g. the
        # bias of a linear layer followed by batch norm)
        assert (gi - gu).norm() <= 1e-4 * gu.norm() + 1e-12, ((gi - gu).norm(), gu.norm())
        nonzero += int(gu.norm() > 1e-8)
    assert nonzero >= 4  # feedback, input and classifier weights all get a gradient


def test_implicit_gradient_matches_finite_differences():
    net, x, y = tiny("f_mlp", leak=0.8)
    net.eval()  # fixed BN and power-iteration state, so the loss is a function of the weights only
    ide = STRATEGIES.build("ide", T=5, max_iter=100, tol=1e-12)

    def loss_at_equilibrium(with_grad):
        ctx = net.prepare(ide.encode(x))
        a_star = fixed_point_of_map(net, ctx)
        out = ide.implicit(net, ctx, a_star) if with_grad else a_star
        return F.cross_entropy(net.readout(out), y)

    loss_at_equilibrium(True).backward()
    checks = [(net.feedback.gain, ())]  # and the two largest gradient entries of each weight
    for p in (net.feedback.op.weight, net.input[0][1].weight, net.classifier.weight):
        for flat in p.grad.abs().flatten().topk(2).indices.tolist():
            checks.append((p, tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), p.shape))))
    eps = 1e-6
    for p, idx in checks:
        with torch.no_grad():
            old = p[idx].item()
            p[idx] = old + eps
            up = loss_at_equilibrium(False).item()
            p[idx] = old - eps
            down = loss_at_equilibrium(False).item()
            p[idx] = old
        fd = (up - down) / (2 * eps)
        assert abs(fd) > 1e-6
        assert p.grad[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


# ----------------------------------------------------------------------------- solvers
def linear_problem(norm, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = A * norm / torch.linalg.matrix_norm(A, ord=2)
    v = torch.randn(2, n // 2, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - A.T, v.flatten()).view_as(v)
    return (lambda x: (A.T @ x.flatten()).view_as(x) + v), v, exact


@pytest.mark.parametrize("solver", SOLVERS.names())
def test_solver_reaches_tolerance_on_contractive_map(solver):
    G, v, exact = linear_problem(0.8)
    x, info = SOLVERS.get(solver)(G, v, max_iter=200, tol=1e-10)
    assert info.converged and info.residual <= 1e-10
    # the solution of g = J^T g + v, i.e. (I - J^T)^-1 v, not the (2I - J^T)^-1 v of a damped iteration
    torch.testing.assert_close(x, exact, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS.names())
def test_solver_reports_non_convergence(solver):
    v = torch.ones(3, 4, dtype=torch.float64)
    x, info = SOLVERS.get(solver)(lambda g: 1.5 * g + v, v, max_iter=20, tol=1e-8)  # expanding
    if info.converged:  # a linear solver may still find the (repelling) fixed point -2v
        torch.testing.assert_close(x, -2 * v)
    x, info = SOLVERS.get(solver)(lambda g: g + v, v, max_iter=20, tol=1e-8)  # no solution
    assert not info.converged and torch.isfinite(x).all() and info.residual >= 0.5


def test_non_contractive_model_warns_and_logs_no_nan():
    """Self-inhibition -3 I at threshold 2 with constant input 1.5 keeps every rate inside (0, 1),
    so J = -1.5 I: the plain iteration of the adjoint equation cannot converge."""
    net, x, y = tiny("f_mlp", norm_range=3.0)
    with torch.no_grad():
        net.feedback.op.weight.copy_(torch.eye(12))
        net.feedback.u.copy_(torch.nn.functional.normalize(torch.ones(12), dim=0))
        net.feedback.v.copy_(net.feedback.u)
        net.feedback.gain.fill_(-3.0)
        net.input[0][1].weight.zero_()
        net.input[1].bias.fill_(1.5)
    ide = STRATEGIES.build("ide", T=20, solver="fixed_point", max_iter=10, tol=1e-10)
    with pytest.warns(RuntimeWarning, match="IDE adjoint solver 'fixed_point' did not reach tol=1e-10"):
        F.cross_entropy(ide.forward(net, x).mean(0), y).backward()
    assert all(torch.isfinite(p.grad).all() for p in params_of(net) if p.grad is not None)
    metrics = ide.step_metrics()
    assert metrics["ide/residual"] > 1e-10 and metrics["ide/iterations"] == 10


def test_unknown_solver_and_bad_options():
    with pytest.raises(ValueError, match="unknown solver 'newton'; valid choices: anderson, broyden, fixed_point"):
        STRATEGIES.build("ide", T=5, solver="newton")
    with pytest.raises(ValueError, match="max_iter must be > 0"):
        STRATEGIES.build("ide", T=5, max_iter=0)
    with pytest.raises(ValueError, match="strategy 'ide' cannot train model SpikingMLP"):
        SNNModule("mlp", num_classes=3, input_shape=(4,), strategy="ide")


# ----------------------------------------------------------------------------- batch norm
def test_running_bn_statistics_change_once_per_training_step():
    torch.manual_seed(0)
    m = SNNModule("multilayer_f", num_classes=3, input_shape=(3, 8, 8), strategy="ide", T=4,
                  network_args={"channels": (4, 5, 6, 5, 4)}, neuron=NeuronConfig(threshold=2.0))
    bns = [m.net.input[1], *m.net.hidden_bns]
    x, y = torch.rand(6, 3, 8, 8) * 3, torch.randint(0, 3, (6,))
    for step in (1, 2):
        m.strategy.train_step(m.net, x, y, m.loss)
        assert [int(bn.num_batches_tracked) for bn in bns] == [step] * len(bns)
    # the update is the batch statistics of the currents at the equilibrium rates
    bn = m.net.hidden_bns[-1]
    before = bn.running_mean.clone()
    ctx = m.net.prepare(m.strategy.encode(x))
    with torch.no_grad():
        a_star = m.net.simulate(ctx, bn="running")
        a = m.net.equilibrium_map(a_star, ctx, bn="batch")  # replay to get layer 4's rate
    m.strategy.train_step(m.net, x, y, m.loss)
    assert int(bn.num_batches_tracked) == 3 and not torch.equal(bn.running_mean, before)
    with torch.no_grad():  # evaluation uses and keeps the running statistics
        m.eval()
        stats = [bn.running_mean.clone() for bn in bns]
        m(x)
        assert all(torch.equal(b.running_mean, s) for b, s in zip(bns, stats))
    del a


def test_restricted_feedback_gain_has_gradient_when_initial_norm_above_one():
    torch.manual_seed(0)
    net = MODELS.build("f_mlp", input_shape=(1, 4, 4), num_classes=3, hidden=12,
                       neuron=NeuronConfig(threshold=2.0))
    with torch.no_grad():
        net.feedback.op.weight.mul_(10)  # spectral norm well above 1
    fresh = type(net.feedback)(net.feedback.op, 1.0)
    assert fresh.gain.item() == 1.0
    w = fresh.weight()
    assert torch.linalg.matrix_norm(w.detach(), ord=2).item() == pytest.approx(1.0, rel=1e-2)
    (w * torch.randn_like(w)).sum().backward()
    assert fresh.gain.grad.abs() > 0
    with torch.no_grad():
        fresh.gain.fill_(3.0)  # an optimiser step past the range is projected back
    fresh.weight()
    assert fresh.gain.item() == 1.0


def test_variational_dropout_one_mask_for_all_steps():
    net, x, _ = tiny("f_mlp", dropout=0.5)
    ide = STRATEGIES.build("ide", T=6)
    ctx = net.prepare(ide.encode(x))
    assert len(ctx.masks) == 1 and ctx.masks[0].shape == (4, 12)
    mask = ctx.masks[0]
    assert set(mask.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1 / keep
    fed, spikes = [], []
    apply, step = net.feedback.apply, net.neurons[0].step
    net.feedback.apply = lambda a, w: fed.append(a.clone()) or apply(a, w)
    net.neurons[0].step = lambda i: spikes.append(step(i)) or spikes[-1]
    try:
        with torch.no_grad():
            net.simulate(ctx)
    finally:
        del net.feedback.apply, net.neurons[0].step
    # step t >= 1 feeds back the spikes of step t - 1 through the one mask of the batch
    assert len(fed) == 5 and len(spikes) == 6
    for t, a in enumerate(fed, start=1):
        torch.testing.assert_close(a, spikes[t - 1] * mask)
    dropped = mask == 0
    assert any(s[dropped].any() for s in spikes)  # dropped units do spike ...
    assert all(not a[dropped].any() for a in fed)  # ... but never feed back, at any step
    net.eval()
    assert net.prepare(ide.encode(x)).masks == [None]


@pytest.mark.parametrize("name", sorted(TINY))
def test_ide_rate_close_to_equilibrium(name):
    """The SNN's rate approaches the fixed point of the equivalent map as T grows."""
    # the multilayer net's deep layers stay silent at threshold 2 from the official initialisation
    # (a silent last layer is a fixed point at every T): a lower threshold keeps every layer active
    net, x, _ = tiny(name, threshold=0.5 if name == "multilayer_f" else 2.0)
    net.eval()
    errs = []
    for T in (10, 100):
        ctx = net.prepare(x.unsqueeze(0).expand(T, *x.shape))
        with torch.no_grad():
            a = net.simulate(ctx)
            errs.append((net.equilibrium_map(a, ctx) - a).abs().mean().item())
    assert errs[1] < errs[0] and errs[1] < 0.02


def test_bptt_trains_feedback_models():
    net, x, y = tiny("multilayer_f", threshold=0.5)
    out = STRATEGIES.build("bptt", T=10).forward(net, x)
    assert out.shape == (1, 4, 3)
    F.cross_entropy(out.mean(0), y).backward()
    assert net.feedback.op.weight.grad.abs().sum() > 0 and net.input[0].weight.grad.abs().sum() > 0


def f_mlp_count(n_in, classes, h=400):
    # input linear + BN, feedback h x h (no bias), classifier, gain of the restricted feedback
    return n_in * h + h + 2 * h + h * h + h * classes + classes + 1


def f_conv_count(c, hw, pad, classes, ch=64, k=5):
    out = (hw + 2 * pad - k) // 2 + 1  # stride-2 input conv
    return k * k * c * ch + ch + 2 * ch + k * k * ch * ch + ch * out * out * classes + classes + 1


def multilayer_count(chans, classes, c_in=3, hw=32):
    c1, c5 = chans[0], chans[-1]
    n = 9 * c_in * c1 + c1 + 2 * c1  # conv3x3 s2 + BN
    n += sum(9 * a * b + b + 2 * b for a, b in zip(chans, chans[1:]))  # conv3x3 + BN layers 2..5
    n += 9 * c5 * c1  # transposed-conv feedback, no bias
    h = (hw + 1) // 2 // 2
    return n + c5 * h * h * classes + classes + 1


ALEX, CIFARNET = (96, 256, 384, 384, 256), (128, 256, 512, 1024, 512)


@pytest.mark.parametrize(
    "name, classes, shape, kw, count, paper",
    [
        ("f_mlp", 10, (1, 28, 28), {}, f_mlp_count(784, 10), "478K"),  # "F400"
        ("f_conv", 10, (1, 28, 28), {}, f_conv_count(1, 28, 2, 10), "229K"),  # "F64C5"
        ("f_conv", 10, (2, 34, 34), {"input_padding": 1}, f_conv_count(2, 34, 1, 10), None),  # N-MNIST, padding 1
        ("f_conv", 10, (2, 34, 34), {"input_padding": 2}, f_conv_count(2, 34, 2, 10), "291K"),  # N-MNIST
        ("alexnet_f", 10, (3, 32, 32), {}, multilayer_count(ALEX, 10), "3.7M"),
        ("alexnet_f", 100, (3, 32, 32), {}, multilayer_count(ALEX, 100), "5.2M"),
        ("cifarnet_f", 10, (3, 32, 32), {}, multilayer_count(CIFARNET, 10), "11.8M"),
        ("cifarnet_f", 100, (3, 32, 32), {}, multilayer_count(CIFARNET, 100), "14.8M"),
    ],
)
def test_parameter_counts_match_the_paper(name, classes, shape, kw, count, paper):
    """The count derived from the architecture, and the paper's rounded figure (without the one
    gain of the restricted feedback weight)."""
    net = MODELS.build(name, input_shape=shape, num_classes=classes, **kw)
    assert isinstance(net, FeedbackSNN)
    assert sum(p.numel() for p in net.parameters()) == count
    if paper is not None:  # within the last digit the paper gives
        unit = {"K": 1e3, "M": 1e6}[paper[-1]]
        step = unit * (0.1 if "." in paper else 1.0)
        assert abs((count - 1) - float(paper[:-1]) * unit) < step


@pytest.mark.parametrize("name", ["f_conv", "multilayer_f"])
def test_ide_training_step_memory_does_not_grow_with_T(name):
    """Peak live tensor memory of a whole IDE step (simulation, adjoint, backward) is the same at
    T=30 and T=100: the rate is accumulated online and no [T, B, ...] tensor is made. The tracker
    counts every storage allocated in the step; a stack of per-step spikes adds (T-30) spike maps."""
    from lightning_snn.profiling import TensorMemoryTracker

    peaks = {}
    for T in (30, 100):
        net, x, y = tiny(name)
        net.train()
        ide = STRATEGIES.build("ide", T=T, max_iter=20, tol=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the solver's tolerance is not the point
            with TensorMemoryTracker() as mem:
                F.cross_entropy(ide.forward(net, x).mean(0), y).backward()
        peaks[T] = mem.peak
    assert peaks[30] > 0
    assert peaks[100] <= 1.1 * peaks[30], peaks
