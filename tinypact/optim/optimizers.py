"""SGD and Adam with parameter groups (PyTorch's torch.optim semantics).

A parameter group is a dict {"params": [...], "lr": ..., "weight_decay": ..., ...}; options not
given in a group take the optimizer's defaults, so e.g. alpha parameters can get their own
weight decay. Weight decay is L2 added to the gradient (g + wd * p), as in PyTorch's SGD and Adam.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from tinypact import _kernels
from tinypact.tensor import Tensor


class Optimizer:
    """Holds parameter groups and per-parameter state; subclasses implement `_update`."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict] = []
        seen: set[int] = set()
        for group in groups:
            group = {**self.defaults, **group, "params": list(group["params"])}
            for p in group["params"]:
                if not isinstance(p, Tensor) or not p.requires_grad:
                    raise TypeError("optimizer parameters must be tensors that require grad")
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one parameter group")
                seen.add(id(p))
            group.setdefault("initial_lr", group["lr"])
            self.param_groups.append(group)
        self.state: dict[int, dict] = {}  # id(parameter) -> its state arrays

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient (in place, outside the graph)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, p.grad, group, self.state.setdefault(id(p), {}))

    def _update(self, p: Tensor, grad: np.ndarray, group: dict, state: dict) -> None:
        """Update p in place from its gradient (weight decay not yet added)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def _ordered_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        """{"state": {index: {name: array or number}}, "param_groups": [options + param indices]}
        with parameters numbered in group order (PyTorch's layout)."""
        params = self._ordered_params()
        index = {id(p): i for i, p in enumerate(params)}
        state = {index[key]: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                              for k, v in s.items()}
                 for key, s in self.state.items() if key in index}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups)):
            raise ValueError("optimizer state_dict does not match this optimizer's parameter groups")
        params = self._ordered_params()
        for group, own in zip(groups, self.param_groups):
            own.update({k: v for k, v in group.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            self.state[id(p)] = {k: (np.array(v, dtype=p.dtype) if np.ndim(v) else v)
                                 for k, v in s.items()}


def _with_weight_decay(grad: np.ndarray, p: Tensor, group: dict) -> np.ndarray:
    """g + wd * p (a new array; g itself when wd is 0)."""
    return grad + group["weight_decay"] * p.data if group["weight_decay"] else grad


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's form):

        g <- g + wd * p;   b <- momentum * b + (1 - dampening) * g   (b = g at the first step)
        p <- p - lr * (g + momentum * b  if nesterov else  b)
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid SGD settings lr={lr}, momentum={momentum}, "
                             f"weight_decay={weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, p, grad, group, state):
        grad = _with_weight_decay(grad, p, group)
        momentum = group["momentum"]
        if momentum:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = np.array(grad, dtype=p.dtype, copy=True)
            else:
                buf = state["momentum_buffer"]
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            buf = state["momentum_buffer"]
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data -= p.dtype.type(group["lr"]) * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba), with L2 weight decay added to the gradient (PyTorch's Adam):

        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    def _update(self, p, grad, group, state):
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        arrays = (p.data, grad, state["exp_avg"], state["exp_avg_sq"])
        if p.dtype != np.float32 or not all(a.flags.c_contiguous and a.dtype == p.dtype
                                            for a in arrays):
            self._update_numpy(p, grad, group, state)
            return
        # One fused pass (_kernels.adam_update): the float32 operations below, in their order,
        # with the same float32 constants, so the same bits as _update_numpy (tests/test_optim.py).
        beta1, beta2 = group["betas"]
        t, f32 = state["step"], np.float32
        _kernels.adam_update(*(a.reshape(-1) for a in arrays), f32(group["weight_decay"]),
                             f32(beta1), f32(1 - beta1), f32(beta2), f32(1 - beta2),
                             f32(group["lr"] / (1 - beta1 ** t)), f32(math.sqrt(1 - beta2 ** t)),
                             f32(group["eps"]))

    def _update_numpy(self, p, grad, group, state):
        """The update in NumPy expressions, one pass each (state["step"] already counts it)."""
        grad = _with_weight_decay(grad, p, group)
        beta1, beta2 = group["betas"]
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * (grad * grad)
        step_size = group["lr"] / (1 - beta1 ** t)
        denom = np.sqrt(v) / p.dtype.type(math.sqrt(1 - beta2 ** t))
        denom += group["eps"]
        p.data -= p.dtype.type(step_size) * (m / denom)
