"""Optimizer steps against hand-computed updates; parameter groups; schedules; state dicts."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tinypact import nn, optim


def param(values, grad):
    p = nn.Parameter(np.array(values, dtype=np.float64))
    p.grad = np.array(grad, dtype=np.float64)
    return p


def test_plain_sgd_step():
    p = param([1.0, -2.0], [0.5, 0.25])
    optim.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.05, -2.0 - 0.025])


def test_sgd_momentum_weight_decay_two_steps():
    """b1 = g1 + wd p0;  p1 = p0 - lr b1;  b2 = m b1 + (g2 + wd p1);  p2 = p1 - lr b2."""
    p = param([1.0], [0.5])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    opt.step()
    b1 = 0.5 + 0.01 * 1.0
    p1 = 1.0 - 0.1 * b1
    assert p.data[0] == pytest.approx(p1)
    p.grad = np.array([-0.2])
    opt.step()
    b2 = 0.9 * b1 + (-0.2 + 0.01 * p1)
    assert p.data[0] == pytest.approx(p1 - 0.1 * b2)


def test_sgd_nesterov():
    """Nesterov: step with g + m b instead of b."""
    p = param([0.0], [1.0])
    opt = optim.SGD([p], lr=1.0, momentum=0.5, nesterov=True)
    opt.step()  # b = 1, step = 1 + 0.5
    assert p.data[0] == pytest.approx(-1.5)
    p.grad = np.array([1.0])
    opt.step()  # b = 0.5 + 1 = 1.5, step = 1 + 0.75
    assert p.data[0] == pytest.approx(-1.5 - 1.75)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([param([0.0], [0.0])], lr=1.0, nesterov=True)


def test_adam_two_steps_by_hand():
    p = param([1.0, -1.0], [0.1, -0.3])
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.999), 1e-8, 0.1
    opt = optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    x, m, v = np.array([1.0, -1.0]), 0.0, 0.0
    for t, g in enumerate([np.array([0.1, -0.3]), np.array([-0.2, 0.4])], start=1):
        p.grad = g
        opt.step()
        g = g + wd * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(p.data, x, rtol=1e-12, err_msg=f"Adam step {t}")


def test_parameter_groups_have_their_own_lr_and_weight_decay():
    a, b = param([1.0], [0.0]), param([1.0], [0.0])
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0, "weight_decay": 0.5}], lr=0.1,
                    weight_decay=0.0)
    opt.step()
    assert a.data[0] == pytest.approx(1.0), "group 0: no weight decay, zero gradient"
    assert b.data[0] == pytest.approx(1.0 - 1.0 * 0.5), "group 1: own lr and weight decay"
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [a]}, {"params": [a]}], lr=0.1)


def test_parameters_without_gradient_are_left_alone():
    p = param([1.0], [0.0])
    p.grad = None
    optim.Adam([p], lr=0.1).step()
    assert p.data[0] == 1.0


def test_step_and_multistep_schedules():
    p = param([1.0], [0.0])
    opt = optim.SGD([p], lr=1.0)
    step = optim.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        step.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25]
    opt2 = optim.SGD([param([1.0], [0.0])], lr=0.1)
    multi = optim.MultiStepLR(opt2, milestones=[2, 4], gamma=0.1)
    lrs = []
    for _ in range(6):
        lrs.append(multi.get_last_lr()[0])
        multi.step()
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_schedule():
    opt = optim.Adam([param([1.0], [0.0])], lr=1.0)
    cosine = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.1)
    lrs = []
    for _ in range(5):
        lrs.append(cosine.get_last_lr()[0])
        cosine.step()
    expected = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    np.testing.assert_allclose(lrs, expected)
    assert lrs[0] == 1.0 and lrs[-1] == pytest.approx(0.1)


def test_optimizer_and_scheduler_state_survive_a_json_round_trip():
    """Resume: a fresh optimizer loaded from state_dict() continues exactly."""
    def make():
        p = param([1.0, 2.0], [0.0, 0.0])
        opt = optim.Adam([p], lr=0.1)
        return p, opt, optim.StepLR(opt, 1, 0.5)

    p, opt, sched = make()
    for g in ([0.1, 0.2], [0.3, -0.1]):
        p.grad = np.array(g)
        opt.step()
        sched.step()
    state = opt.state_dict()
    as_json = json.loads(json.dumps(
        state, default=lambda a: a.tolist() if isinstance(a, np.ndarray) else a))
    q, opt2, sched2 = make()
    q.data[...] = p.data
    opt2.load_state_dict(as_json)
    sched2.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert sched2.get_last_lr() == sched.get_last_lr() == [0.025]
    p.grad = q.grad = np.array([0.5, 0.5])
    opt.step()
    opt2.step()
    np.testing.assert_allclose(q.data, p.data, rtol=1e-12)
