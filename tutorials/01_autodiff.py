# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Autodiff from scratch: the Tensor, the tape, `backward`, a gradient check
#
# Everything tinypact trains, from a 2-layer toy to a quantized ResNet, rests on one idea:
# **reverse-mode automatic differentiation**. This notebook takes it apart on small examples:
#
# 1. what a `Tensor` records when you compute with it (the *tape*),
# 2. how `backward()` walks that record to get every gradient in one pass,
# 3. how to write a new operation (forward next to backward) and how broadcasting is undone,
# 4. how to *check* a gradient numerically, and why in float64,
# 5. a tiny network trained with nothing but these pieces.
#
# The code is in `tinypact/tensor.py` (the Tensor and `backward`, ~200 lines) and
# `tinypact/ops.py` (every op, forward beside backward). Reading them next to this notebook is
# the intended use.

# %%
import os, sys, pathlib
try:
    import tinypact
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(pathlib.Path.cwd().parent))
SMALL = os.environ.get("TINYPACT_TUTORIAL_FAST", "") not in ("", "0")  # the test suite sets it

import numpy as np
import matplotlib.pyplot as plt
# %matplotlib inline
plt.rcParams.update({"figure.figsize": (6.4, 3.4), "figure.dpi": 72, "axes.grid": True,
                     "grid.alpha": 0.3})
np.set_printoptions(precision=4, suppress=True, linewidth=100)

# %% [markdown]
# ## The tape
#
# A `Tensor` wraps a NumPy array. When an operation has an input that `requires_grad`, its
# output remembers its inputs (`_parents`), the operation's name (`_op`) and a closure
# (`_backward`) that maps the gradient of the output to the gradients of the inputs. Nothing
# else: the "graph" is just these back-pointers.
#
# Take one neuron, $y = \tanh(w x + b)$:

# %%
from tinypact import Tensor, no_grad

x = Tensor(0.5)
w = Tensor(-1.5, requires_grad=True)
b = Tensor(0.8, requires_grad=True)
y = (w * x + b).tanh()

def show(t, depth=0):
    """Print the recorded graph under t, one node a line."""
    label = t._op or ("leaf (requires_grad)" if t.requires_grad else "constant")
    print("    " * depth + f"{label:22s} value = {float(t.data):+.4f}")
    for parent in t._parents:
        show(parent, depth + 1)

show(y)

# %% [markdown]
# `x` is a constant (no `requires_grad`), so it is recorded as an input of `mul` but nothing
# will be computed for it. `w` and `b` are *leaves*: tensors created by you, that will receive
# a `.grad`.
#
# ## `backward()`: the chain rule, run backwards
#
# For a scalar loss $L$ and an op $z = f(a, b)$, the chain rule says
# $\frac{\partial L}{\partial a} = \frac{\partial L}{\partial z}\frac{\partial z}{\partial a}$.
# Each `_backward` closure computes exactly that product (a *vector-Jacobian product*) without
# ever forming the Jacobian: `mul` returns $(g\,b,\; g\,a)$, `tanh` returns $g\,(1-\tanh^2)$.
#
# `backward()` sorts the graph so that every node comes after everything that depends on it
# (an iterative depth-first search, so a graph 100 000 ops deep is fine), starts with
# $\partial L/\partial L = 1$ and runs the closures in that order, *adding* gradients that
# reach a node along several paths.

# %%
y.backward()
print("autodiff : dy/dw =", w.grad, "  dy/db =", b.grad)

t = np.tanh(-1.5 * 0.5 + 0.8)           # by hand: dy/dw = (1 - tanh^2) x, dy/db = 1 - tanh^2
print("by hand  : dy/dw =", (1 - t**2) * 0.5, "  dy/db =", 1 - t**2)

# %% [markdown]
# The same on a whole curve: the derivative of $\tanh$ that autodiff returns for 200 inputs at
# once (pass `backward` a vector of ones: the gradient of $\sum_i y_i$) against the formula.

# %%
xs = Tensor(np.linspace(-4, 4, 200), requires_grad=True)
ys = xs.tanh()
ys.backward(np.ones(200))

fig, ax = plt.subplots()
ax.plot(xs.data, ys.data, label="tanh(x)")
ax.plot(xs.data, xs.grad, lw=3, alpha=0.5, label="autodiff d/dx")
ax.plot(xs.data, 1 - np.tanh(xs.data) ** 2, "k--", lw=1, label="1 - tanh(x)^2")
ax.set_xlabel("x"); ax.legend(); plt.show()

# %% [markdown]
# ### Three behaviours worth knowing (PyTorch has the same)
#
# * **A reused value gets the sum of its gradients.** In $z = x \cdot x + x$, `x` feeds three
#   places; $dz/dx = 2x + 1$. A `=` instead of `+=` in `backward` would give 1 or $x$.
# * **Gradients accumulate across calls.** A second `backward()` *adds* to `.grad`; that is why
#   a training loop calls `zero_grad()` before each step.
# * **Under `no_grad()` nothing is recorded** (evaluation, optimizer updates).

# %%
x = Tensor(3.0, requires_grad=True)
z = x * x + x
z.backward()
print("dz/dx after one backward :", x.grad, "(2*3 + 1 = 7)")
z.backward()
print("after a second backward  :", x.grad, "(accumulated)")
x.zero_grad()
print("after zero_grad          :", x.grad)

with no_grad():
    z = x * x + x
print("computed under no_grad   : requires_grad =", z.requires_grad, ", parents =", z._parents)


# %% [markdown]
# ## Writing an operation: forward next to backward
#
# Every op in `tinypact/ops.py` has the same shape: compute the output with NumPy, and hand
# `Tensor.from_op` the inputs and a closure from the output gradient `g` to the input gradients.
# Here is one that tinypact does not ship, the softplus $s(x) = \ln(1 + e^x)$ with
# $s'(x) = \sigma(x) = 1/(1+e^{-x})$:

# %%
def softplus(a: Tensor) -> Tensor:
    """ln(1 + e^a);  da = g * sigmoid(a)."""
    out = np.logaddexp(0, a.data)                 # stable for large |a|
    sigmoid = 1 / (1 + np.exp(-a.data))           # captured by the closure, reused in backward
    return Tensor.from_op(out, (a,), lambda g: (g * sigmoid,), "softplus")

a = Tensor(np.array([-2.0, 0.0, 3.0]), requires_grad=True)
softplus(a).sum().backward()
print("gradient:", a.grad, " sigmoid:", 1 / (1 + np.exp(-a.data)))

# %% [markdown]
# ### Broadcasting is undone in one place
#
# NumPy broadcasting copies an operand along new leading axes and along axes of size 1. The
# gradient of a copy is the **sum** over the copies, so each binary op reduces its input
# gradients back to the input's shape with one helper, `sum_to`. A bias of shape `(3,)` added
# to a batch of shape `(4, 3)` gets the column sums of the upstream gradient:

# %%
from tinypact.tensor import sum_to

batch = Tensor(np.arange(12.0).reshape(4, 3))
bias = Tensor(np.zeros(3), requires_grad=True)
upstream = np.arange(12.0).reshape(4, 3)          # some dL/d(batch + bias)
(batch + bias).backward(upstream)
print("bias.grad           :", bias.grad)
print("column sums         :", upstream.sum(axis=0))
print("sum_to((4,3)->(1,3)):", sum_to(upstream, (1, 3)))


# %% [markdown]
# ## Checking a gradient
#
# A wrong backward does not crash: the network just learns badly. So every op is checked
# against **central differences**,
# $$\frac{f(x + h v) - f(x - h v)}{2h} = \nabla f(x) \cdot v + O(h^2),$$
# along a random direction $v$ (all inputs perturbed at once, one pair of evaluations), with
# the output weighted by a random vector $r$ rather than summed: $f = r \cdot \mathrm{op}(x)$.
# With `.sum()` every output would get the same weight and a backward that mixes up output
# positions (a wrong transpose) would pass.

# %%
def gradient_check(op, *arrays, h=1e-6, seed=0):
    """Relative error between autodiff and central differences of r . op(*arrays) along v."""
    rng = np.random.default_rng(seed)
    inputs = [Tensor(a.astype(np.float64), requires_grad=True) for a in arrays]
    out = op(*inputs)
    r = rng.standard_normal(out.shape)
    (out * Tensor(r)).sum().backward()
    vs = [rng.standard_normal(a.shape) for a in arrays]
    analytic = sum(float(np.sum(t.grad * v)) for t, v in zip(inputs, vs))

    def f(step):
        with no_grad():
            moved = [Tensor(a.astype(np.float64) + step * v) for a, v in zip(arrays, vs)]
            return float(np.sum(op(*moved).data * r))

    numeric = (f(h) - f(-h)) / (2 * h)
    return abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-12)

rng = np.random.default_rng(1)
A, B = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
print("matmul          :", gradient_check(lambda a, b: a @ b, A, B))
print("softplus        :", gradient_check(softplus, A))
print("tanh(a) / (1+a^2):", gradient_check(lambda a: a.tanh() / (a * a + 1.0), A))
print("broadcast a * b :", gradient_check(lambda a, b: a * b, A, rng.standard_normal((1, 5))))


# %% [markdown]
# Errors around $10^{-9}$ or below: the backward formulas are right. A bug shows up as an
# error of order 1. Let us plant one: a softplus whose backward uses $e^x$ instead of
# $\sigma(x)$.

# %%
def softplus_wrong(a):
    return Tensor.from_op(np.logaddexp(0, a.data), (a,), lambda g: (g * np.exp(a.data),), "bad")

print("wrong backward:", gradient_check(softplus_wrong, A))


# %% [markdown]
# ### Why float64, and which step $h$
#
# The finite difference has two errors pulling in opposite directions: the truncation error of
# the formula, $\propto h^2$, and the round-off of subtracting two nearly equal numbers,
# $\propto \varepsilon/h$ with $\varepsilon$ the machine epsilon. The best $h$ is near
# $\varepsilon^{1/3}$: about $10^{-5}$ in float64 and $10^{-2}$ in float32, where the best
# reachable error in float32 is only about $10^{-5}$; too blunt to catch a small bug.
# That is why tinypact's gradient tests run in float64.

# %%
def finite_difference_error(dtype, h):
    x = np.asarray(0.7, dtype=dtype)
    f = lambda v: np.tanh(v).astype(dtype)
    numeric = (f(x + dtype(h)) - f(x - dtype(h))) / dtype(2 * h)
    return abs(float(numeric) - (1 - np.tanh(0.7) ** 2))

hs = np.logspace(-12, 0, 49)
fig, ax = plt.subplots()
for dtype in (np.float64, np.float32):
    ax.loglog(hs, [max(finite_difference_error(dtype, h), 1e-17) for h in hs],
              ".-", label=dtype.__name__)
ax.set_xlabel("step h"); ax.set_ylabel("|numeric - exact|")
ax.set_title("central difference of tanh at 0.7"); ax.legend(); plt.show()

# %% [markdown]
# Read the V shapes: to the right of each minimum the $h^2$ truncation error dominates (slope 2),
# to the left the round-off error (slope −1). float32's minimum sits five orders of magnitude
# higher than float64's.
#
# ## Putting it together: a tiny network trained from scratch
#
# With a Tensor, `backward` and a handful of ops we can already train. Two interleaved half
# moons, a 2-16-16-2 network with `tanh`, and the cross-entropy written from ops:
# $\mathrm{CE} = -\frac{1}{N}\sum_i \log \mathrm{softmax}(z_i)_{y_i}$ with
# $\log\mathrm{softmax}(z) = z - m - \log\sum_j e^{z_j - m}$ ($m = \max_j z_j$, a constant
# shift for numerical safety). The parameters are `Parameter`s inside a `Module`, which finds
# them by looking at its attributes, as in PyTorch. The update is plain gradient descent,
# $\theta \leftarrow \theta - \eta\, \partial L/\partial\theta$.

# %%
from tinypact.nn import Module, Parameter

def two_moons(n, noise=0.15, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    points = np.where(label[:, None] == 0,
                      np.c_[np.cos(t), np.sin(t)],
                      np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    return (points + noise * rng.standard_normal((n, 2))).astype(np.float32), label

class MLP(Module):
    def __init__(self, sizes, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.layers = len(sizes) - 1
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            setattr(self, f"w{i}", Parameter(rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)))
            setattr(self, f"b{i}", Parameter(np.zeros(fan_out)))

    def forward(self, x):
        for i in range(self.layers):
            x = x @ getattr(self, f"w{i}") + getattr(self, f"b{i}")
            x = x.tanh() if i < self.layers - 1 else x
        return x

def cross_entropy(logits, labels):
    shifted = logits - Tensor(logits.data.max(axis=1, keepdims=True))
    log_probs = shifted - shifted.exp().sum(axis=1, keepdims=True).log()
    return -log_probs[np.arange(len(labels)), labels].mean()

points, labels = two_moons(200 if SMALL else 400)
model = MLP([2, 16, 16, 2])
print("parameters:", [(name, p.shape) for name, p in model.named_parameters()])

# %%
steps, lr = (150 if SMALL else 600), 0.5
losses = []
for step in range(steps):
    loss = cross_entropy(model(Tensor(points)), labels)
    model.zero_grad()
    loss.backward()
    for p in model.parameters():
        p.data -= lr * p.grad
    losses.append(loss.item())

with no_grad():
    accuracy = (model(Tensor(points)).data.argmax(axis=1) == labels).mean()
print(f"final loss {losses[-1]:.3f}, training accuracy {accuracy:.1%}")

gx, gy = np.meshgrid(np.linspace(-1.5, 2.5, 120), np.linspace(-1.0, 1.5, 90))
with no_grad():
    grid_logits = model(Tensor(np.c_[gx.ravel(), gy.ravel()].astype(np.float32))).data
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.4))
ax0.plot(losses); ax0.set_xlabel("step"); ax0.set_ylabel("cross-entropy"); ax0.set_yscale("log")
ax1.contourf(gx, gy, grid_logits.argmax(1).reshape(gx.shape), alpha=0.25, cmap="coolwarm")
ax1.scatter(points[:, 0], points[:, 1], c=labels, s=6, cmap="coolwarm")
ax1.set_title("decision regions"); plt.show()

# %% [markdown]
# That is all of deep learning's machinery in miniature. The next notebook swaps the
# hand-written pieces for tinypact's layers (`Conv2d`, `BatchNorm2d`), losses and optimizers,
# and trains a convolutional network on images.
#
# **Try:** change `lr` to 5 and watch the loss; remove `model.zero_grad()` and explain what
# happens; write `sigmoid` as an op and check it with `gradient_check`.
