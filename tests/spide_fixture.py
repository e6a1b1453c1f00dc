"""A small feedback SNN and its implicit gradient by a dense solve of the adjoint equation
``(I - J^T) beta = dL/da``, shared by the SPIDE tests and ``bench/spide_error.py``.

Two Jacobians J: SPIDE's (:func:`rate_mask_gradient`, the official code's rule), each layer's
input current linearised at the SNN's forward rates with the mask ``m_l = 1[0 < a_l < 1]`` on the
layer's *rate*; and IDE's (:func:`exact_gradient`), the full Jacobian of the equivalent map (the
clamp mask on the map value) at the last layer's rate. They differ where a neuron is silent or
saturated in the SNN while its map value lies inside (0, 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_snn.models import MODELS
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES


def small_net(name: str = "f_mlp", seed: int = 0):
    torch.manual_seed(seed)
    neuron = NeuronConfig(threshold=1.0)
    if name == "f_mlp":
        net = MODELS.build("f_mlp", input_shape=(1, 4, 4), num_classes=3, neuron=neuron, hidden=24)
        shape = (6, 1, 4, 4)
    elif name == "f_conv":
        net = MODELS.build("f_conv", input_shape=(1, 6, 6), num_classes=3, neuron=neuron, channels=3,
                           kernel_size=3, input_padding=1)
        shape = (4, 1, 6, 6)
    elif name == "lenet_zero":
        net = MODELS.build("lenet_zero", input_shape=(1, 8, 8), num_classes=3, neuron=neuron,
                           channels=(3, 4), hidden=10)
        shape = (4, 1, 8, 8)
    else:  # the official multi-layer nets have no batch norm; a low threshold keeps all 5 active
        net = MODELS.build("multilayer_f", input_shape=(2, 4, 4), num_classes=3,
                           neuron=NeuronConfig(threshold=0.3), channels=(3, 3, 4, 3, 3), batch_norm=False,
                           feedback_init_scale=0.1)
        shape = (4, 2, 4, 4)
    net = net.double().train()
    x = torch.rand(shape, dtype=torch.float64) * 2
    y = torch.arange(shape[0]) % 3
    return net, x, y


def implicit_parts(net, x, T: int = 30):
    """The SNN's rate and what both gradients need, with a fixed BN state (no running update)."""
    strat = STRATEGIES.build("ide", T=T)
    ctx = net.prepare(strat.encode(x))
    with torch.no_grad():
        a_star = net.simulate(ctx, bn="running")
    return ctx, a_star


def snn_rates(net, x, T: int = 30) -> tuple:
    """The forward rate of every layer ``[a_1, ..., a_L]`` (as :func:`implicit_parts`)."""
    strat = STRATEGIES.build("spide", T=T)
    ctx = net.prepare(strat.encode(x))
    with torch.no_grad():
        rates = net.simulate_layers(ctx, bn="running")
    return ctx, rates


def implicit_params(net) -> list[tuple[str, Tensor]]:
    """Parameters whose gradient comes through the adjoint (not the classifier's)."""
    return [(n, p) for n, p in net.named_parameters() if not n.startswith("classifier")]


def exact_gradient(net, x, y, T: int = 30) -> tuple[Tensor, float]:
    """(flattened implicit-parameter gradient, the largest |adjoint| of any layer) by a dense
    solve."""
    ctx, a_star = implicit_parts(net, x, T)
    a = a_star.detach().requires_grad_()
    loss = F.cross_entropy(net.readout(a), y)
    (g,) = torch.autograd.grad(loss, a)
    J = torch.autograd.functional.jacobian(
        lambda v: net.equilibrium_map(v.view_as(a_star), ctx, bn="batch", detach=True).flatten(),
        a_star.flatten())
    n = J.shape[0]
    beta = torch.linalg.solve(torch.eye(n, dtype=J.dtype) - J.T, g.flatten()).view_as(a_star)
    # the adjoint of every layer's output, beta_{l} = J_{l+1}^T beta_{l+1}: all must be in range
    ins = [a_star]
    with torch.no_grad():
        for l in range(len(net.neurons) - 1):
            ins.append(net.layer_map(l, ins[-1], ctx, bn="batch"))
    betas, b = [beta], beta
    for l in range(len(net.neurons) - 1, 0, -1):
        leaf = ins[l].detach().requires_grad_()
        (b,) = torch.autograd.grad(net.layer_map(l, leaf, ctx, bn="batch", detach=True), leaf, b)
        betas.append(b)
    beta_max = max(float(t.abs().max()) for t in betas)
    z = net.equilibrium_map(a_star, ctx, bn="batch")
    params = [p for _, p in implicit_params(net)]
    grads = torch.autograd.grad(z, params, beta, allow_unused=True)
    flat = torch.cat([(gr if gr is not None else torch.zeros_like(p)).flatten()
                      for gr, p in zip(grads, params)])
    return flat, beta_max


def rate_mask_gradient(net, x, y, T: int = 30, feedback: bool = True) -> tuple[Tensor, float]:
    """(flattened implicit-parameter gradient, the largest |adjoint| of any layer) of SPIDE's rule
    by dense matrices: layer ``l``'s Jacobian ``J_l = diag(m_l / Vth) dI_l/da`` at its forward
    input rate, ``J = J_L ... J_1``, ``beta_L = (I - J^T)^{-1} dL/da_L`` (``feedback=False``:
    ``beta_L = dL/da_L``), ``beta_{l-1} = J_l^T beta_l``, and the parameter gradient
    ``sum_l (dI_l/dtheta)^T (m_l beta_l / Vth)``."""
    ctx, rates = snn_rates(net, x, T)
    L = len(rates)
    ins = [rates[-1]] + rates[:-1]  # the input rate of each layer: a_L, a_1, ..., a_{L-1}
    masks = [((a > 0) & (a < 1)).to(a.dtype) for a in rates]
    vths = [n.vth().detach() for n in net.neurons]

    def lin(l, a, detach=True):
        return net.layer_current(l, a, ctx, bn="batch", detach=detach) * masks[l] / vths[l]

    Js = [torch.autograd.functional.jacobian(lambda v, l=l: lin(l, v.view_as(ins[l])).flatten(),
                                             ins[l].flatten()) for l in range(L)]
    J = Js[0]
    for l in range(1, L):
        J = Js[l] @ J
    a = rates[-1].detach().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(net.readout(a), y), a)
    g = g.flatten()
    beta = torch.linalg.solve(torch.eye(J.shape[0], dtype=J.dtype) - J.T, g) if feedback else g
    betas = [beta]
    for l in range(L - 1, 0, -1):
        betas.insert(0, Js[l].T @ betas[0])
    beta_max = max(float(b.abs().max()) for b in betas)
    total = sum((lin(l, ins[l], detach=False).flatten() * betas[l]).sum() for l in range(L))
    params = [p for _, p in implicit_params(net)]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    flat = torch.cat([(gr if gr is not None else torch.zeros_like(p)).flatten()
                      for gr, p in zip(grads, params)])
    return flat, beta_max


def spide_gradient(net, x, y, T_b: int, grad_scale: float, T: int = 30) -> Tensor:
    """The flattened implicit-parameter gradient of the SPIDE strategy (same SNN rates)."""
    strat = STRATEGIES.build("spide", T=T, T_b=T_b, grad_scale=grad_scale)
    ctx, rates = snn_rates(net, x, T)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    state = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
    out = strat.implicit(net, ctx, rates)
    loss = F.cross_entropy(net.readout(out), y)
    params = [p for _, p in implicit_params(net)]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for bn, (m, v) in zip(bns, state):  # leave the model as it was for the next call
        bn.running_mean.copy_(m)
        bn.running_var.copy_(v)
    return torch.cat([(gr if gr is not None else torch.zeros_like(p)).flatten()
                      for gr, p in zip(grads, params)])


def relative_errors(name: str, T_bs: list[int], headroom: float = 0.5) -> dict[int, float]:
    """Relative error of the SPIDE gradient against :func:`rate_mask_gradient` for each T_b;
    ``grad_scale`` puts the largest ``|beta|`` of any layer at ``headroom`` of the backward
    neurons' maximal rate."""
    net, x, y = small_net(name)
    exact, beta_max = rate_mask_gradient(net, x, y)
    scale = headroom / beta_max
    return {T_b: float((spide_gradient(net, x, y, T_b, scale) - exact).norm() / exact.norm())
            for T_b in T_bs}
