"""Options that reproduce the official IDE code: the solver's absolute tolerance and the power
iteration order of the feedback restriction."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_snn.models import MODELS
from lightning_snn.models.feedback import RestrictedWeight
from lightning_snn.neurons import NeuronConfig
from lightning_snn.strategies import STRATEGIES


@pytest.mark.parametrize("op", [nn.Linear(7, 5, bias=False), nn.Conv2d(3, 4, 3, bias=False),
                                nn.ConvTranspose2d(4, 3, 3, stride=2, bias=False)])
def test_power_iteration_updates_v_then_u_like_torch_spectral_norm(op):
    torch.manual_seed(0)
    dim = 1 if isinstance(op, nn.ConvTranspose2d) else 0  # the output dimension of the weight
    ref = nn.utils.spectral_norm(copy.deepcopy(op), n_power_iterations=1, dim=dim).double()
    rw = RestrictedWeight(op, norm_range=10.0).double().train()
    ref.weight_orig.data.copy_(rw.op.weight.data)
    u0 = F.normalize(torch.randn_like(rw.u), dim=0)  # a start far from converged
    rw.u.copy_(u0)
    ref.weight_u.copy_(u0)
    w = rw.weight()
    x = torch.zeros((1, 7) if isinstance(op, nn.Linear) else (1, ref.in_channels, 5, 5),
                    dtype=torch.float64)
    ref.train()(x)  # spectral_norm's pre-forward hook runs one power iteration
    torch.testing.assert_close(rw.u, ref.weight_u, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rw.v, ref.weight_v, rtol=1e-12, atol=1e-14)
    # the same sigma: W / gain equals spectral_norm's normalised weight
    torch.testing.assert_close(w / rw.gain, ref.weight, rtol=1e-12, atol=1e-14)


def _ide_step(tol, tol_mode, max_iter=30):
    torch.manual_seed(0)
    net = MODELS.build("f_mlp", input_shape=(1, 4, 4), num_classes=3,
                       neuron=NeuronConfig(threshold=1.0), hidden=16).double()
    strat = STRATEGIES.build("ide", T=20, solver="broyden", max_iter=max_iter, tol=tol,
                             tol_mode=tol_mode)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64) * 2
    F.cross_entropy(strat.forward(net, x).mean(0), torch.arange(5) % 3).backward()
    return strat.step_metrics()


def test_absolute_tolerance_is_per_element_like_the_official_solver():
    rel = _ide_step(1e-5, "relative")
    assert rel["ide/residual"] <= 1e-5 and rel["ide/iterations"] < 30
    # the official eps 2e-10 sqrt(B d) (B d = 5 * 16): stops only below that absolute residual
    off = _ide_step(2e-10, "absolute")
    assert off["ide/abs_residual"] <= 2e-10 * 80 ** 0.5 or off["ide/iterations"] == 30
    assert off["ide/abs_residual"] < rel["ide/abs_residual"]
    loose = _ide_step(1.0, "absolute")  # |residual| <= sqrt(80) at the first iterate already
    assert loose["ide/iterations"] == 1
    with pytest.raises(ValueError, match="tol_mode must be one of"):
        STRATEGIES.build("ide", T=4, tol_mode="rel")
