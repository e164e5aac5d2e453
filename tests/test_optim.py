"""Optimizer steps against hand-computed updates; parameter groups; schedules; state dicts."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=40, deadline=None)
@given(size=st.sampled_from([1, 7, 1000, 70_000]), seed=st.integers(0, 2**16),
       wd=st.sampled_from([0.0, 1e-7, 5e-4]), lr=st.floats(1e-5, 0.5),
       beta1=st.floats(0.0, 0.99), beta2=st.floats(0.0, 0.9999), eps=st.sampled_from([1e-8, 1e-5]))
def test_adam_fused_kernel_gives_the_numpy_updates_bits(size, seed, wd, lr, beta1, beta2, eps):
    """The float32 fast path (_kernels.adam_update, parallel above 65,536 values) against
    _update_numpy, the same steps in NumPy expressions: equal bits over three steps."""
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(size).astype(np.float32)
    fused, plain = nn.Parameter(start.copy()), nn.Parameter(start.copy())
    options = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    opt_fused, opt_plain = optim.Adam([fused], **options), optim.Adam([plain], **options)
    for _ in range(3):
        grad = (rng.standard_normal(size) * rng.choice([1e-6, 1.0, 1e3])).astype(np.float32)
        fused.grad, plain.grad = grad.copy(), grad.copy()
        opt_fused.step()
        state = opt_plain.state.setdefault(id(plain), {})
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(plain.data),
                         exp_avg_sq=np.zeros_like(plain.data))
        state["step"] += 1
        opt_plain._update_numpy(plain, plain.grad, opt_plain.param_groups[0], state)
        np.testing.assert_array_equal(fused.data, plain.data)
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(opt_fused.state[id(fused)][name], state[name])


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
