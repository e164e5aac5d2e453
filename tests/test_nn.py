"""Layers and Module: parameters, buffers, state_dict round trips, train/eval, initialisation."""
from __future__ import annotations

import numpy as np
import pytest

import tinypact as tp
from tinypact import Tensor, nn
from tinypact import functional as F


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))


def test_parameters_and_buffers_have_dotted_names():
    net = small_net()
    assert [name for name, _ in net.named_parameters()] == [
        "0.weight", "1.weight", "1.bias", "6.weight", "6.bias"]
    assert list(net.state_dict()) == ["0.weight", "1.weight", "1.bias", "6.weight", "6.bias",
                                      "1.running_mean", "1.running_var"]
    assert all(p.requires_grad and p.dtype == np.float32 for p in net.parameters())


def test_state_dict_round_trip_restores_outputs():
    tp.manual_seed(0)
    net, other = small_net().eval(), small_net().eval()
    net[1].running_mean[...] = np.arange(4)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32))
    other.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(other(x).data, net(x).data)
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({"0.weight": net.state_dict()["0.weight"]})


def test_train_eval_switches_batch_norm_and_dropout():
    tp.manual_seed(1)
    net = small_net()
    x = Tensor(np.random.default_rng(1).standard_normal((4, 3, 4, 4)).astype(np.float32))
    net.train()
    before = net[1].running_mean.copy()
    net(x)
    assert not np.array_equal(net[1].running_mean, before), "training updates running stats"
    net.eval()
    assert not any(m.training for m in net.modules())
    after = net[1].running_mean.copy()
    y1, y2 = net(x).data, net(x).data
    np.testing.assert_array_equal(y1, y2, err_msg="eval is deterministic (no dropout)")
    np.testing.assert_array_equal(net[1].running_mean, after, err_msg="eval leaves stats alone")


def test_zero_grad_clears_every_parameter_gradient():
    net = small_net()
    x = Tensor(np.ones((2, 3, 4, 4), np.float32))
    F.cross_entropy(net(x), np.array([0, 1])).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_layers_compute_what_functional_does():
    tp.manual_seed(2)
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32))
    conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)
    np.testing.assert_array_equal(conv(x).data, F.conv2d(x, conv.weight, conv.bias, 2, 1).data)
    assert nn.AvgPool2d("global")(x).shape == (2, 3, 1, 1)
    assert nn.MaxPool2d(2, ceil_mode=True)(Tensor(np.ones((1, 1, 5, 5)))).shape == (1, 1, 3, 3)
    assert nn.Flatten()(x).shape == (2, 108)
    lin = nn.Linear(108, 4, bias=False)
    assert lin.bias is None and lin(nn.Flatten()(x)).shape == (2, 4)


@pytest.mark.parametrize("mode, fan", [("fan_in", 64 * 9), ("fan_out", 32 * 9)])
def test_kaiming_normal_has_the_he_variance(mode, fan):
    """std = sqrt(2 / fan) for ReLU (He et al. 2015)."""
    w = nn.Parameter(np.empty((32, 64, 3, 3)))
    nn.init.kaiming_normal_(w, mode=mode, generator=np.random.default_rng(0))
    expected = np.sqrt(2.0 / fan)
    assert abs(w.data.std() / expected - 1) < 0.03, f"std {w.data.std()}, expected {expected}"


def test_kaiming_uniform_bound():
    w = nn.Parameter(np.empty((16, 50)))
    nn.init.kaiming_uniform_(w, generator=np.random.default_rng(0))
    bound = np.sqrt(3) * np.sqrt(2.0 / 50)
    assert np.abs(w.data).max() <= bound and np.abs(w.data).max() > 0.95 * bound
    assert nn.init.calculate_gain("leaky_relu", 0.2) == pytest.approx(np.sqrt(2 / 1.04))
    with pytest.raises(ValueError, match="mode"):
        nn.init.kaiming_normal_(w, mode="fan_avg")


def test_manual_seed_makes_initialisation_reproducible():
    tp.manual_seed(7)
    a = nn.Linear(5, 3).weight.data.copy()
    tp.manual_seed(7)
    np.testing.assert_array_equal(nn.Linear(5, 3).weight.data, a)


def test_batch_norm_layer_defaults_and_momentum_convention():
    bn = nn.BatchNorm2d(2, eps=1e-4, momentum=0.1)
    x = np.zeros((2, 2, 2, 2), np.float32)
    x[:, 1] = 4.0
    bn(Tensor(x))
    np.testing.assert_allclose(bn.running_mean, [0.0, 0.4], err_msg="0.9 * 0 + 0.1 * batch mean")
    np.testing.assert_allclose(bn.running_var, [0.9, 0.9], err_msg="0.9 * 1 + 0.1 * 0")
