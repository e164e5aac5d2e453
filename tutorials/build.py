"""Build the tutorials: every notebook's cells live here as text, so they are reviewed as text.

    python tutorials/build.py                    # write every notebook, without outputs
    python tutorials/build.py --execute          # write and execute every notebook (what is committed)
    python tutorials/build.py --execute 03 05    # only the notebooks whose name contains 03 or 05
    python tutorials/build.py --execute --fast   # tiny settings (TINYPACT_TUTORIAL_FAST=1), as the tests
    python tutorials/build.py --execute --single-thread   # one Numba/BLAS thread (a busy machine)

Each notebook reads `TINYPACT_TUTORIAL_FAST` into a `SMALL` flag: set, it uses tiny settings
(the test suite executes every notebook that way); unset, it uses settings that finish in a couple
of minutes and give the numbers worth reading. Committed notebooks carry outputs from an unset run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAST_FLAG = "TINYPACT_TUTORIAL_FAST"


def md(text: str):
    return new_markdown_cell(dedent(text).strip())


def code(text: str):
    return new_code_cell(dedent(text).strip())


# The first code cell of every notebook: the SMALL flag, imports, plot settings, and a path
# fallback so a notebook opened from tutorials/ works without `pip install -e .`.
SETUP = code('''
    import os, sys, pathlib
    try:
        import tinypact
    except ImportError:  # running from a source checkout without `pip install -e .`
        sys.path.insert(0, str(pathlib.Path.cwd().parent))
    SMALL = os.environ.get("TINYPACT_TUTORIAL_FAST", "") not in ("", "0")  # the test suite sets it

    import numpy as np
    import matplotlib.pyplot as plt
    %matplotlib inline
    plt.rcParams.update({"figure.figsize": (6.4, 3.4), "figure.dpi": 72, "axes.grid": True,
                         "grid.alpha": 0.3})
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
''')

# Notebooks that call tinypact.trainer.fit: tinypact.plots selects matplotlib's Agg backend when it
# is imported, so import it first and let the notebook's inline backend win.
SETUP_TRAINING = code(SETUP.source.replace(
    "import matplotlib.pyplot as plt\n",
    "import tinypact.plots  # selects the Agg backend on import: before `%matplotlib inline`\n"
    "import matplotlib.pyplot as plt\n"))


# =============================================================================== 01 autodiff
AUTODIFF = [
    md('''
    # 1. Autodiff from scratch: the Tensor, the tape, `backward`, a gradient check

    Everything tinypact trains, from a 2-layer toy to a quantized ResNet, rests on one idea:
    **reverse-mode automatic differentiation**. This notebook takes it apart on small examples:

    1. what a `Tensor` records when you compute with it (the *tape*),
    2. how `backward()` walks that record to get every gradient in one pass,
    3. how to write a new operation (forward next to backward) and how broadcasting is undone,
    4. how to *check* a gradient numerically, and why in float64,
    5. a tiny network trained with nothing but these pieces.

    The code is in `tinypact/tensor.py` (the Tensor and `backward`, ~200 lines) and
    `tinypact/ops.py` (every op, forward beside backward). Reading them next to this notebook is
    the intended use.
    '''),
    SETUP,
    md('''
    ## The tape

    A `Tensor` wraps a NumPy array. When an operation has an input that `requires_grad`, its
    output remembers its inputs (`_parents`), the operation's name (`_op`) and a closure
    (`_backward`) that maps the gradient of the output to the gradients of the inputs. Nothing
    else: the "graph" is just these back-pointers.

    Take one neuron, $y = \\tanh(w x + b)$:
    '''),
    code('''
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
    '''),
    md('''
    `x` is a constant (no `requires_grad`), so it is recorded as an input of `mul` but nothing
    will be computed for it. `w` and `b` are *leaves*: tensors created by you, that will receive
    a `.grad`.

    ## `backward()`: the chain rule, run backwards

    For a scalar loss $L$ and an op $z = f(a, b)$, the chain rule says
    $\\frac{\\partial L}{\\partial a} = \\frac{\\partial L}{\\partial z}\\frac{\\partial z}{\\partial a}$.
    Each `_backward` closure computes exactly that product (a *vector-Jacobian product*) without
    ever forming the Jacobian: `mul` returns $(g\\,b,\\; g\\,a)$, `tanh` returns $g\\,(1-\\tanh^2)$.

    `backward()` sorts the graph so that every node comes after everything that depends on it
    (an iterative depth-first search, so a graph 100 000 ops deep is fine), starts with
    $\\partial L/\\partial L = 1$ and runs the closures in that order, *adding* gradients that
    reach a node along several paths.
    '''),
    code('''
    y.backward()
    print("autodiff : dy/dw =", w.grad, "  dy/db =", b.grad)

    t = np.tanh(-1.5 * 0.5 + 0.8)           # by hand: dy/dw = (1 - tanh^2) x, dy/db = 1 - tanh^2
    print("by hand  : dy/dw =", (1 - t**2) * 0.5, "  dy/db =", 1 - t**2)
    '''),
    md('''
    The same on a whole curve: the derivative of $\\tanh$ that autodiff returns for 200 inputs at
    once (pass `backward` a vector of ones: the gradient of $\\sum_i y_i$) against the formula.
    '''),
    code('''
    xs = Tensor(np.linspace(-4, 4, 200), requires_grad=True)
    ys = xs.tanh()
    ys.backward(np.ones(200))

    fig, ax = plt.subplots()
    ax.plot(xs.data, ys.data, label="tanh(x)")
    ax.plot(xs.data, xs.grad, lw=3, alpha=0.5, label="autodiff d/dx")
    ax.plot(xs.data, 1 - np.tanh(xs.data) ** 2, "k--", lw=1, label="1 - tanh(x)^2")
    ax.set_xlabel("x"); ax.legend(); plt.show()
    '''),
    md('''
    ### Three behaviours worth knowing (PyTorch has the same)

    * **A reused value gets the sum of its gradients.** In $z = x \\cdot x + x$, `x` feeds three
      places; $dz/dx = 2x + 1$. A `=` instead of `+=` in `backward` would give 1 or $x$.
    * **Gradients accumulate across calls.** A second `backward()` *adds* to `.grad`; that is why
      a training loop calls `zero_grad()` before each step.
    * **Under `no_grad()` nothing is recorded** (evaluation, optimizer updates).
    '''),
    code('''
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
    '''),
    md('''
    ## Writing an operation: forward next to backward

    Every op in `tinypact/ops.py` has the same shape: compute the output with NumPy, and hand
    `Tensor.from_op` the inputs and a closure from the output gradient `g` to the input gradients.
    Here is one that tinypact does not ship, the softplus $s(x) = \\ln(1 + e^x)$ with
    $s'(x) = \\sigma(x) = 1/(1+e^{-x})$:
    '''),
    code('''
    def softplus(a: Tensor) -> Tensor:
        """ln(1 + e^a);  da = g * sigmoid(a)."""
        out = np.logaddexp(0, a.data)                 # stable for large |a|
        sigmoid = 1 / (1 + np.exp(-a.data))           # captured by the closure, reused in backward
        return Tensor.from_op(out, (a,), lambda g: (g * sigmoid,), "softplus")

    a = Tensor(np.array([-2.0, 0.0, 3.0]), requires_grad=True)
    softplus(a).sum().backward()
    print("gradient:", a.grad, " sigmoid:", 1 / (1 + np.exp(-a.data)))
    '''),
    md('''
    ### Broadcasting is undone in one place

    NumPy broadcasting copies an operand along new leading axes and along axes of size 1. The
    gradient of a copy is the **sum** over the copies, so each binary op reduces its input
    gradients back to the input's shape with one helper, `sum_to`. A bias of shape `(3,)` added
    to a batch of shape `(4, 3)` gets the column sums of the upstream gradient:
    '''),
    code('''
    from tinypact.tensor import sum_to

    batch = Tensor(np.arange(12.0).reshape(4, 3))
    bias = Tensor(np.zeros(3), requires_grad=True)
    upstream = np.arange(12.0).reshape(4, 3)          # some dL/d(batch + bias)
    (batch + bias).backward(upstream)
    print("bias.grad           :", bias.grad)
    print("column sums         :", upstream.sum(axis=0))
    print("sum_to((4,3)->(1,3)):", sum_to(upstream, (1, 3)))
    '''),
    md('''
    ## Checking a gradient

    A wrong backward does not crash: the network just learns badly. So every op is checked
    against **central differences**,
    $$\\frac{f(x + h v) - f(x - h v)}{2h} = \\nabla f(x) \\cdot v + O(h^2),$$
    along a random direction $v$ (all inputs perturbed at once, one pair of evaluations), with
    the output weighted by a random vector $r$ rather than summed: $f = r \\cdot \\mathrm{op}(x)$.
    With `.sum()` every output would get the same weight and a backward that mixes up output
    positions (a wrong transpose) would pass.
    '''),
    code('''
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
    '''),
    md('''
    Errors around $10^{-9}$ or below: the backward formulas are right. A bug shows up as an
    error of order 1. Let us plant one: a softplus whose backward uses $e^x$ instead of
    $\\sigma(x)$.
    '''),
    code('''
    def softplus_wrong(a):
        return Tensor.from_op(np.logaddexp(0, a.data), (a,), lambda g: (g * np.exp(a.data),), "bad")

    print("wrong backward:", gradient_check(softplus_wrong, A))
    '''),
    md('''
    ### Why float64, and which step $h$

    The finite difference has two errors pulling in opposite directions: the truncation error of
    the formula, $\\propto h^2$, and the round-off of subtracting two nearly equal numbers,
    $\\propto \\varepsilon/h$ with $\\varepsilon$ the machine epsilon. The best $h$ is near
    $\\varepsilon^{1/3}$: about $10^{-5}$ in float64 and $10^{-2}$ in float32, where the best
    reachable error in float32 is only about $10^{-5}$; too blunt to catch a small bug.
    That is why tinypact's gradient tests run in float64.
    '''),
    code('''
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
    '''),
    md('''
    Read the V shapes: to the right of each minimum the $h^2$ truncation error dominates (slope 2),
    to the left the round-off error (slope −1). float32's minimum sits five orders of magnitude
    higher than float64's.

    ## Putting it together: a tiny network trained from scratch

    With a Tensor, `backward` and a handful of ops we can already train. Two interleaved half
    moons, a 2-16-16-2 network with `tanh`, and the cross-entropy written from ops:
    $\\mathrm{CE} = -\\frac{1}{N}\\sum_i \\log \\mathrm{softmax}(z_i)_{y_i}$ with
    $\\log\\mathrm{softmax}(z) = z - m - \\log\\sum_j e^{z_j - m}$ ($m = \\max_j z_j$, a constant
    shift for numerical safety). The parameters are `Parameter`s inside a `Module`, which finds
    them by looking at its attributes, as in PyTorch. The update is plain gradient descent,
    $\\theta \\leftarrow \\theta - \\eta\\, \\partial L/\\partial\\theta$.
    '''),
    code('''
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
    '''),
    code('''
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
    '''),
    md('''
    That is all of deep learning's machinery in miniature. The next notebook swaps the
    hand-written pieces for tinypact's layers (`Conv2d`, `BatchNorm2d`), losses and optimizers,
    and trains a convolutional network on images.

    **Try:** change `lr` to 5 and watch the loss; remove `model.zero_grad()` and explain what
    happens; write `sigmoid` as an op and check it with `gradient_check`.
    '''),
]


# ======================================================================= 02 conv and batch-norm
CONVNET = [
    md('''
    # 2. Convolution, batch-norm, and training a small network

    Notebook 1 built the autodiff engine. Here come the two layers every network in the PACT paper
    is made of, and a real training run:

    1. **convolution**: its definition, how tinypact computes it with one matrix product
       (*im2col*), and its gradient;
    2. **batch normalization**: training mode versus evaluation mode, running statistics, and its
       (less obvious) gradient;
    3. a small conv net trained on the **bundled Fashion-MNIST sample** (5 000 training and 1 000
       test images shipped inside the package, so this runs offline).

    Code: `tinypact/functional/conv.py`, `tinypact/functional/normalization.py`,
    `tinypact/nn/layers.py`, `tinypact/optim/optimizers.py`, `tinypact/data/`.
    '''),
    SETUP,
    code('''
    from tinypact import Tensor, no_grad, nn, optim
    from tinypact import functional as F
    from tinypact.data import DataLoader, load_dataset
    import tinypact.random

    tinypact.random.manual_seed(0)                 # initialization and dropout draw from here
    train_set, test_set = load_dataset("sample", "train"), load_dataset("sample", "test")
    print(train_set); print(test_set)

    fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
    for k, ax in enumerate(axes.flat):
        index = np.flatnonzero(train_set.labels == k % 10)[k // 10]
        ax.imshow(train_set.images[index, 0], cmap="gray_r"); ax.axis("off")
        if k < 10:
            ax.set_title(train_set.classes[k], fontsize=8)
    plt.show()
    '''),
    md('''
    A `Dataset` keeps the uint8 pixels, `(N, C, H, W)`; a `DataLoader` hands out shuffled batches
    as float32 $x = \\text{pixel}/255$ with int64 labels.

    ## Convolution

    For an input $x$ of shape $(N, C, H, W)$ and weights $w$ of shape $(O, C, K_h, K_w)$, with
    zero padding $p$ and stride $s$ (what deep learning calls convolution is a cross-correlation):
    $$\\text{out}[n, o, y, x] = b[o] + \\sum_{c,i,j} w[o, c, i, j]\\; x_{\\text{pad}}[n, c,\\, ys + i,\\, xs + j],
    \\qquad H_{\\text{out}} = \\left\\lfloor \\frac{H + 2p - K_h}{s} \\right\\rfloor + 1 .$$
    Written as loops it is six nested `for`s. `F.conv2d` must agree with them:
    '''),
    code('''
    def conv2d_loops(x, w, b, stride, padding):
        """The definition, literally (slow: for checking only)."""
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
        out = np.zeros((n, o, oh, ow))
        for ni in range(n):
            for oi in range(o):
                for y in range(oh):
                    for xi in range(ow):
                        window = xp[ni, :, y * stride:y * stride + kh, xi * stride:xi * stride + kw]
                        out[ni, oi, y, xi] = b[oi] + np.sum(w[oi] * window)
        return out

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6)); w = rng.standard_normal((4, 3, 3, 3)); b = rng.standard_normal(4)
    for stride, padding in [(1, 0), (1, 1), (2, 1)]:
        fast = F.conv2d(Tensor(x), Tensor(w), Tensor(b), stride=stride, padding=padding).data
        slow = conv2d_loops(x, w, b, stride, padding)
        print(f"stride {stride}, padding {padding}: output {fast.shape}, "
              f"max |difference| {np.abs(fast - slow).max():.1e}")
    '''),
    md('''
    What a filter does is easiest to see with hand-made ones. Two edge detectors (Sobel) and a
    blur, applied to one image with padding 1 (same size out):
    '''),
    code('''
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
    filters = np.stack([sobel, sobel.T, np.full((3, 3), 1 / 9, dtype=np.float32)])[:, None]  # (3, 1, 3, 3)
    image = train_set.images[np.flatnonzero(train_set.labels == 9)[0]][None] / np.float32(255)
    maps = F.conv2d(Tensor(image), Tensor(filters), padding=1).data[0]

    fig, axes = plt.subplots(1, 4, figsize=(9, 2.5))
    titles = ["input", "vertical edges", "horizontal edges", "blur"]
    for ax, picture, title in zip(axes, [image[0, 0], *maps], titles):
        ax.imshow(picture, cmap="gray_r" if title in ("input", "blur") else "RdBu")
        ax.set_title(title, fontsize=9); ax.axis("off")
    plt.show()
    '''),
    md('''
    ### im2col: a convolution is one matrix product

    Six Python loops are far too slow. Every output pixel is the dot product of one *window*
    (length $K_h K_w C$) with each filter, so stack all windows as the rows of a matrix
    `cols` of shape $(N H_{\\text{out}} W_{\\text{out}},\\; K_h K_w C)$ and the whole layer is
    $$\\text{out} = \\text{cols}\\; W^\\top, \\qquad W \\text{ reshaped to } (O,\\; K_h K_w C),$$
    a single BLAS call. NumPy builds `cols` from a strided *view* (no copy until the reshape).
    The backward pass is two more products and a scatter:
    $$\\frac{\\partial L}{\\partial W} = g^\\top \\text{cols}, \\qquad
    \\frac{\\partial L}{\\partial \\text{cols}} = g\\, W \\;\\xrightarrow{\\text{col2im}}\\; \\frac{\\partial L}{\\partial x},$$
    where col2im adds each window's gradient back to the pixels it came from (a pixel sits in up to
    $K_h K_w$ windows, so its gradient is a sum). The same layer lowered by hand:
    '''),
    code('''
    from numpy.lib.stride_tricks import sliding_window_view

    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))                          # padding 1, stride 1
    windows = sliding_window_view(xp, (3, 3), axis=(2, 3))                    # (N, C, OH, OW, 3, 3)
    n, c, oh, ow = windows.shape[:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * 9)    # one row per window
    out = (cols @ w.reshape(4, -1).T + b).reshape(n, oh, ow, 4).transpose(0, 3, 1, 2)
    print("cols:", cols.shape, " W:", w.reshape(4, -1).shape, " out:", out.shape)
    print("matches F.conv2d:", np.allclose(out, F.conv2d(Tensor(x), Tensor(w), Tensor(b), padding=1).data))
    '''),
    md('''
    The gradient is checked as in notebook 1: float64, central differences along a random
    direction, the output weighted by a random vector.
    '''),
    code('''
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
                return float(np.sum(op(*[Tensor(a + step * v) for a, v in zip(arrays, vs)]).data * r))

        numeric = (f(h) - f(-h)) / (2 * h)
        return abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-12)

    print("conv2d, stride 2, padding 1:",
          gradient_check(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), x, w, b))
    print("max_pool2d 2x2             :", gradient_check(lambda x: F.max_pool2d(x, 2), x))
    '''),
    md('''
    (Max-pooling passes the gradient to the largest value of each window only; random inputs have
    no ties, so the finite difference agrees.)

    ## Batch normalization

    Deep networks train badly when the scale of each layer's inputs drifts as the layers below
    learn. Batch-norm re-centres and re-scales every channel with the statistics of the current
    batch, then lets the network choose the scale it wants with two learned parameters
    $\\gamma_c, \\beta_c$ per channel:
    $$\\mu_c = \\frac{1}{M}\\sum x, \\quad \\sigma_c^2 = \\frac{1}{M}\\sum (x - \\mu_c)^2, \\quad
    \\hat x = \\frac{x - \\mu_c}{\\sqrt{\\sigma_c^2 + \\epsilon}}, \\quad y = \\gamma_c\\, \\hat x + \\beta_c,$$
    the sums running over the $M = N H W$ values of channel $c$ in the batch.

    At test time there may be a single image, so there is no batch to take statistics from.
    During training each layer keeps **running averages** (buffers: saved in the `state_dict`,
    not learned): $\\text{running} \\leftarrow (1 - m)\\,\\text{running} + m\\,\\text{batch}$ with
    PyTorch's convention $m = 0.1$ (what TensorFlow and tensorpack call "momentum 0.9").
    `model.eval()` switches every batch-norm to normalize with them. This matters for the integer
    engine later: at inference batch-norm is a fixed per-channel affine map, which folds into the
    next quantizer's thresholds.
    '''),
    code('''
    bn = nn.BatchNorm2d(2)
    channels = [rng.normal(5.0, 3.0, (16, 4, 4)), rng.normal(-1.0, 0.2, (16, 4, 4))]
    batch = Tensor(np.stack(channels, axis=1).astype(np.float32))
    y = bn(batch)                                                   # training mode: batch statistics
    print("input  mean, std per channel:", batch.data.mean(axis=(0, 2, 3)), batch.data.std(axis=(0, 2, 3)))
    print("output mean, std per channel:", y.data.mean(axis=(0, 2, 3)), y.data.std(axis=(0, 2, 3)))
    print("running_mean after one batch  :", bn.running_mean, "(0.1 x the batch mean)")
    for _ in range(50):
        bn(batch)
    print("running_mean after 51 batches :", bn.running_mean)
    bn.eval()
    print("eval mode, same batch: output mean", bn(batch).data.mean(axis=(0, 2, 3)),
          "(normalized with the running statistics)")
    '''),
    md('''
    The gradient through batch-norm in training mode is not just $\\gamma/\\sigma$: every output
    depends on every input of its channel through $\\mu_c$ and $\\sigma_c$. With
    $g = \\partial L/\\partial y$ and bars for means over the channel's $M$ values:
    $$\\frac{\\partial L}{\\partial x} = \\frac{\\gamma}{\\sqrt{\\sigma^2+\\epsilon}}
    \\left(g - \\overline{g} - \\hat x\\; \\overline{g\\,\\hat x}\\right), \\qquad
    \\frac{\\partial L}{\\partial \\gamma} = \\sum g\\,\\hat x, \\qquad \\frac{\\partial L}{\\partial \\beta} = \\sum g .$$
    The two subtracted terms are what the gradient check would catch if they were missing. In eval
    mode the statistics are constants and $\\partial L/\\partial x = g\\,\\gamma/\\sqrt{\\sigma^2+\\epsilon}$.
    '''),
    code('''
    xb = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)

    def bn_train(x, g, b):
        return F.batch_norm(x, np.zeros(3), np.ones(3), g, b, training=True)

    def bn_eval(x, g, b):
        return F.batch_norm(x, np.full(3, 0.5), np.full(3, 2.0), g, b, training=False)

    print("batch_norm, training mode:", gradient_check(bn_train, xb, gamma, beta))
    print("batch_norm, eval mode    :", gradient_check(bn_eval, xb, gamma, beta))
    '''),
    md('''
    ## A small network, trained

    Two blocks of conv 3x3 → batch-norm → ReLU → max-pool 2x2, then one linear layer:
    28x28x1 → 14x14x16 → 7x7x32 → 10 classes. The convs in front of a batch-norm have no bias
    (the norm's $\\beta$ does that job). Training minimizes the cross-entropy
    $-\\frac{1}{N}\\sum_i \\log \\mathrm{softmax}(z_i)_{y_i}$ with Adam; the loop is the usual
    four lines: forward, `zero_grad`, `backward`, `step`.
    '''),
    code('''
    def small_net(batch_norm=True):
        def block(c_in, c_out):
            if batch_norm:
                return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                        nn.ReLU(), nn.MaxPool2d(2)]
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        return nn.Sequential(*block(1, 16), *block(16, 32), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))

    def predict(model, dataset):
        model.eval()
        with no_grad():
            batches = DataLoader(dataset, batch_size=500, shuffle=False)
            predictions = np.concatenate([model(Tensor(x)).data.argmax(1) for x, _ in batches])
        model.train()
        return predictions

    def train(model, optimizer, dataset, epochs, batch_size=64):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, seed=0)
        losses = []
        for epoch in range(epochs):
            for x, y in loader:
                loss = F.cross_entropy(model(Tensor(x)), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            accuracy = (predict(model, test_set) == test_set.labels).mean()
            print(f"epoch {epoch + 1}: loss (last 20 batches) {np.mean(losses[-20:]):.3f}, "
                  f"test accuracy {accuracy:.1%}")
        return losses

    train_subset = train_set.subset(np.arange(0, 5000, 10)) if SMALL else train_set   # SMALL: 500 images
    model = small_net()
    print(model)
    print("parameters:", sum(p.size for p in model.parameters()))
    losses = train(model, optim.Adam(model.parameters(), lr=2e-3), train_subset, epochs=1 if SMALL else 3)
    '''),
    code('''
    predictions = predict(model, test_set)
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (test_set.labels, predictions), 1)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    ax0.plot(losses, alpha=0.4)
    ax0.plot(np.convolve(losses, np.ones(20) / 20, mode="valid"), label="mean of 20 batches")
    ax0.set_xlabel("batch"); ax0.set_ylabel("cross-entropy"); ax0.legend()
    ax1.imshow(confusion, cmap="Blues")
    ax1.set_xticks(range(10), test_set.classes, rotation=90, fontsize=8)
    ax1.set_yticks(range(10), test_set.classes, fontsize=8)
    ax1.set_xlabel("predicted"); ax1.set_ylabel("true"); ax1.grid(False)
    ax1.set_title(f"test accuracy {(predictions == test_set.labels).mean():.1%}")
    fig.tight_layout(); plt.show()
    '''),
    md('''
    Read the confusion matrix: the errors cluster among the upper-body garments (T-shirt,
    pullover, coat and above all **shirt**), which look alike at 28x28, while trousers, bags and
    footwear are nearly always right. (This is a 5 000-image sample; on the full 60 000 images the
    same network does better.)

    What did the first layer learn? Its 16 filters of 3x3:
    '''),
    code('''
    first = model[0].weight.data[:, 0]
    limit = np.abs(first).max()
    fig, axes = plt.subplots(1, 16, figsize=(10, 0.9))
    for ax, f in zip(axes, first):
        ax.imshow(f, cmap="RdBu", vmin=-limit, vmax=limit); ax.axis("off")
    plt.show()
    '''),
    md('''
    Next: notebook 3 replaces the ReLU by a *quantized* activation, shows why that alone fails,
    and how PACT's learned clipping level fixes it.

    **Try:** train `small_net(batch_norm=False)` with `optim.SGD(..., lr=0.05, momentum=0.9)`
    against the batch-norm version; add a third block; set `padding=0` and work out the new input size of the linear layer from
    $\\lfloor (H + 2p - K)/s \\rfloor + 1$.
    '''),
]


# ============================================================================== 03 PACT
PACT_NB = [
    md('''
    # 3. Why quantizing ReLU fails, and PACT

    To run a network with $k$-bit activations, every activation must take one of $2^k$ values.
    For weights that is easy (they are bounded and fixed after training). Activations are the
    hard part, and the PACT paper's starting point (its Fig. 1) is that the obvious approach,
    quantizing the ReLU's output, trains badly at low precision, while *clipping* the activation
    helps quantization but hurts full-precision accuracy. PACT makes the clipping level a
    parameter $\\alpha$ that the network learns.

    This notebook:
    1. shows what goes wrong when an unbounded ReLU is quantized,
    2. writes PACT's Eq. 1-3 and checks tinypact's gradients against them,
    3. measures the trade-off between clipping error and quantization error,
    4. reproduces Fig. 1 at small scale (training and test error of ReLU vs clipping, quantized
       or not) and watches $\\alpha$ learn,
    5. reproduces Fig. 3 at small scale (cross-entropy versus $\\alpha$, one layer at a time).

    Code: `tinypact/quant/functional.py` (the quantizers as autodiff ops) and
    `tinypact/quant/layers.py` (`ActQuant`, `PACT`).
    '''),
    SETUP,
    md('''
    ## Quantizing a ReLU: which range?

    A $k$-bit unsigned quantizer over a range $[0, a]$ has $n = 2^k - 1$ steps of size $a/n$:
    $$y_q = \\mathrm{round}\\!\\left(\\frac{y\\, n}{a}\\right) \\frac{a}{n}, \\qquad y = \\mathrm{clip}(x, 0, a),$$
    with tinypact's one rounding rule, round half up: $\\mathrm{round}(v) = \\lfloor v + 1/2 \\rfloor$
    (`tinypact.quant.round_half_up`; the integer engine uses the same rule, so its integer codes
    match training exactly).

    A ReLU has no upper bound, so $a$ has to come from the data: say a running average of the
    largest activation, as TensorFlow's fake-quant does (`ActQuant("relu", bits)` in tinypact).
    After batch-norm, pre-activations are roughly standard normal, and the largest of a large
    batch sits between 4 and 5. At 2 bits the levels are then about $\\{0, 1.6, 3.2, 4.7\\}$ and
    almost every positive value lands on 0 or 1.6. A smaller range resolves the bulk of the distribution, at the
    price of *clipping* the rare large values:
    '''),
    code('''
    from tinypact import Tensor
    from tinypact.quant import pact, quantized_relu, round_half_up

    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_000).astype(np.float32)        # pre-activations after batch-norm
    relu = np.maximum(x, 0)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for ax, a in zip(axes, (float(x.max()), 1.5)):
        y_q = quantized_relu(Tensor(x), 2, a).data
        levels = np.arange(4) * a / 3
        ax.hist(relu[relu > 0], bins=120, color="lightgray", label="ReLU output (x > 0)")
        counts = np.bincount(np.floor(y_q * 3 / a + 0.5).astype(int), minlength=4)   # codes 0..3
        ax.vlines(levels, 0, 2500, colors="tab:red", lw=2, label="2-bit levels")
        ax.set_title(f"range a = {a:.2f}: mean squared error {np.mean((y_q - relu) ** 2):.4f}")
        ax.set_xlabel("activation"); ax.legend()
        print(f"a = {a:.2f}: share of all values on each level", np.round(counts / x.size, 3))
    plt.show()
    '''),
    md('''
    With $a$ = the maximum, 2-bit quantization throws away most of the information carried by the
    positive activations; with $a = 1.5$ the error is several times smaller even though every value
    above 1.5 is cut. The right range depends on the layer, the precision and the stage of
    training, which is why PACT *learns* it.

    ## PACT: a learned clipping level

    PACT replaces ReLU by a clipped activation with one learnable scalar $\\alpha$ per layer, and
    quantizes it (paper Eq. 1 and 2):
    $$y = \\mathrm{PACT}(x) = 0.5\\,\\big(|x| - |x - \\alpha| + \\alpha\\big) =
    \\begin{cases} 0 & x < 0 \\\\ x & 0 \\le x < \\alpha \\\\ \\alpha & x \\ge \\alpha \\end{cases}
    \\qquad\\qquad
    y_q = \\mathrm{round}\\!\\left(y\\, \\frac{2^k - 1}{\\alpha}\\right) \\frac{\\alpha}{2^k - 1}.$$
    The rounding has zero gradient almost everywhere, so PACT uses the **straight-through
    estimator** (STE): $\\partial y_q / \\partial y = 1$. Then (Eq. 3)
    $$\\frac{\\partial y_q}{\\partial x} = \\begin{cases} 1 & 0 \\le x < \\alpha \\\\ 0 & \\text{otherwise} \\end{cases}
    \\qquad\\qquad
    \\frac{\\partial y_q}{\\partial \\alpha} = \\begin{cases} 1 & x \\ge \\alpha \\\\ 0 & \\text{otherwise.} \\end{cases}$$
    So $\\alpha$'s gradient is the sum of the upstream gradients of the clipped elements: if the
    loss would like the clipped outputs to be larger, $\\alpha$ grows. An L2 penalty
    $\\lambda_\\alpha \\alpha^2$ pulls it down; the two settle where clipping stops paying.
    '''),
    code('''
    alpha, bits = 2.0, 2
    xs = Tensor(np.linspace(-1, 3, 801), requires_grad=True)
    a = Tensor(np.float64(alpha), requires_grad=True)
    y_q = pact(xs, a, bits)
    y_q.backward(np.ones(xs.shape))                       # gradient of sum(y_q): the local derivatives

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.2))
    ax0.plot(xs.data, np.clip(xs.data, 0, alpha), "k--", lw=1, label="clip(x, 0, alpha)  (Eq. 1)")
    ax0.plot(xs.data, y_q.data, lw=2, label=f"y_q, {bits} bits  (Eq. 2)")
    ax0.set_xlabel("x"); ax0.legend(); ax0.set_title(f"PACT forward, alpha = {alpha}")
    ax1.plot(xs.data, xs.grad, lw=2, label="dy_q/dx (STE)")
    ax1.plot(xs.data, (xs.data >= alpha).astype(float), "--", lw=2, label="dy_q/dalpha")
    ax1.set_xlabel("x"); ax1.legend(); ax1.set_title("PACT backward  (Eq. 3)")
    plt.show()
    print("alpha.grad = number of x >= alpha:", a.grad, "=", int((xs.data >= alpha).sum()))
    '''),
    md('''
    The same rule with a random upstream gradient $g$, as the project's tests check it:
    $\\partial L/\\partial x = g \\cdot [0 \\le x < \\alpha]$ and
    $\\partial L/\\partial \\alpha = \\sum g \\cdot [x \\ge \\alpha]$.
    '''),
    code('''
    x = Tensor(rng.normal(1.0, 1.5, 1000), requires_grad=True)
    a = Tensor(np.float64(1.7), requires_grad=True)
    g = rng.standard_normal(1000)
    pact(x, a, bits=3).backward(g)
    inside, above = (x.data >= 0) & (x.data < 1.7), x.data >= 1.7
    print("dL/dx     matches g * [0 <= x < alpha]:", np.array_equal(x.grad, g * inside))
    print("dL/dalpha =", a.grad, "  sum of g where x >= alpha =", g[above].sum())
    '''),
    md('''
    ## Clipping error versus quantization error

    For a given distribution of $x$, the mean squared difference between $y_q$ and the ReLU output
    has two parts: the **clipping error** of the values above $\\alpha$ (grows as $\\alpha$ shrinks)
    and the **quantization error** inside $[0, \\alpha]$, about $\\frac{1}{12}(\\alpha/n)^2$ per value
    (grows with $\\alpha$). Their sum has a minimum that moves to larger $\\alpha$ as the bits
    increase, and without quantization only the clipping error is left, which just keeps falling:
    '''),
    code('''
    alphas_grid = np.linspace(0.2, 5, 97)
    fig, ax = plt.subplots()
    for bits in (2, 3, 4, 32):
        errors = [np.mean((pact(Tensor(x_), a_, bits).data - np.maximum(x_, 0)) ** 2)
                  for x_ in [rng.standard_normal(50_000)] for a_ in alphas_grid]
        best = alphas_grid[int(np.argmin(errors))]
        label = "no quantization (clipping only)" if bits == 32 else f"{bits} bits: best alpha {best:.2f}"
        ax.semilogy(alphas_grid, errors, label=label)
    ax.set_ylim(1e-5, 1); ax.set_xlabel("alpha"); ax.set_ylabel("mean squared error vs ReLU")
    ax.set_title("x ~ N(0, 1)")
    ax.legend(); plt.show()
    '''),
    md('''
    Minimizing this error is *not* what PACT does: it minimizes the training loss, and a network
    may prefer to clip more (or less) than the least-squares choice. But the picture explains the
    behaviour we will see: at 2 bits the useful $\\alpha$ is small, at full precision anything
    large enough is fine.

    ## Fig. 1 at small scale: ReLU versus clipping, quantized or not

    The paper's Fig. 1 trains CIFAR10-ResNet20 with four activation functions. We train tinypact's
    Fashion-MNIST network (3 conv + BN + activation layers, 1.9 M MACs per image; `tinypact.models`)
    on the bundled sample with full-precision weights everywhere, so only the activations differ:

    | activation | `Policy(act_quant=..., abits=...)` |
    |---|---|
    | ReLU, full precision | `relu`, 32 |
    | ReLU, 2-bit, range = running max | `relu`, 2 |
    | clip to [0, 1], full precision | `dorefa`, 32 (DoReFa's activation: a fixed clipping level) |
    | clip to [0, 1], 2-bit | `dorefa`, 2 |
    | PACT, 2-bit (learned alpha) | `pact`, 2 |
    | PACT, full precision (learned alpha) | `pact`, 32 (used for Fig. 3 below) |

    Training is Adam with cosine learning-rate decay. PACT's $\\alpha$ starts at 10 (the paper's
    choice) and has its own parameter group with L2 decay $\\lambda_\\alpha$. Because Adam moves
    every parameter by about the learning rate per step whatever the size of its gradient, a
    scalar $\\alpha$ needs a larger learning rate than the weights to travel from 10 to its
    useful range within a few epochs (with SGD, as in the paper's CIFAR recipe, the summed
    gradient is large and this is not needed).
    '''),
    code('''
    import time
    from tinypact import no_grad, optim
    from tinypact import functional as F
    from tinypact.data import DataLoader, load_dataset
    from tinypact.models import build_model
    from tinypact.quant import Policy, alpha_parameters, alphas, clamp_alphas
    import tinypact.random

    train_set, test_set = load_dataset("sample", "train"), load_dataset("sample", "test")
    if SMALL:   # the test suite: 250 training and 200 test images, one epoch
        train_set, test_set = train_set.subset(np.arange(0, 5000, 20)), test_set.subset(np.arange(0, 1000, 5))
    EPOCHS = 1 if SMALL else 5   # otherwise all 5 000 training and 1 000 test images
    LR, ALPHA_LR, ALPHA_DECAY = 2e-3, 0.2, 1e-3    # Adam; alpha: own learning rate and L2 decay

    def error_rate(model, dataset):
        model.eval()
        with no_grad():
            wrong = sum(int((model(Tensor(x)).data.argmax(1) != y).sum())
                        for x, y in DataLoader(dataset, batch_size=500, shuffle=False))
        model.train()
        return wrong / len(dataset)

    def train_run(policy, epochs=EPOCHS, lr=LR, alpha_lr=ALPHA_LR, alpha_decay=ALPHA_DECAY, seed=0):
        """Train the fmnist network at `policy`; per-epoch training/test error and alphas."""
        tinypact.random.manual_seed(seed)
        model = build_model("fmnist", policy)
        alpha_params = alpha_parameters(model)
        others = [p for p in model.parameters() if all(p is not a for a in alpha_params)]
        groups = [{"params": others}]
        if alpha_params:
            groups.append({"params": alpha_params, "lr": alpha_lr, "weight_decay": alpha_decay})
        optimizer = optim.Adam(groups, lr=lr)
        loader = DataLoader(train_set, batch_size=64, shuffle=True, seed=seed)
        schedule = optim.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
        history = {"train": [], "test": [], "alphas": [alphas(model)]}
        for epoch in range(epochs):
            wrong = 0
            for x, y in loader:
                logits = model(Tensor(x))
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                clamp_alphas(model)                   # keep alpha > 0 (projection after the step)
                schedule.step()
                wrong += int((logits.data.argmax(1) != y).sum())
                history["alphas"].append(alphas(model))
            history["train"].append(wrong / len(train_set))
            history["test"].append(error_rate(model, test_set))
        return model, history
    '''),
    code('''
    configs = {
        "ReLU, full precision":    Policy(wbits=32, abits=32, first_last_bits=32, act_quant="relu"),
        "ReLU, 2-bit":             Policy(wbits=32, abits=2, first_last_bits=32, act_quant="relu"),
        "clip [0,1], full prec.":  Policy(wbits=32, abits=32, first_last_bits=32, act_quant="dorefa"),
        "clip [0,1], 2-bit":       Policy(wbits=32, abits=2, first_last_bits=32, act_quant="dorefa"),
        "PACT, 2-bit":             Policy(wbits=32, abits=2, first_last_bits=32, act_quant="pact"),
        "PACT, full precision":    Policy(wbits=32, abits=32, first_last_bits=32, act_quant="pact"),
    }
    runs = {}
    for name, policy in configs.items():
        start = time.perf_counter()
        runs[name] = train_run(policy)
        h = runs[name][1]
        print(f"{name:24s} train error {h['train'][-1]:6.1%}   test error {h['test'][-1]:6.1%}"
              f"   ({time.perf_counter() - start:.0f} s)")
    '''),
    code('''
    styles = {"ReLU": "tab:blue", "clip": "tab:orange", "PACT": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for name, (_, h) in runs.items():
        color = styles[name.split(",")[0].split(" ")[0]]
        dashes = "--" if "full" in name else "-"
        epochs_axis = np.arange(1, len(h["train"]) + 1)
        for ax, key in zip(axes, ("train", "test")):
            ax.plot(epochs_axis, 100 * np.array(h[key]), dashes, color=color, marker="o", label=name)
    axes[0].set_title("(a) training error"); axes[1].set_title("(b) test error")
    for ax in axes:
        ax.set_xlabel("epoch"); ax.set_xticks(epochs_axis)
    axes[0].set_ylabel("error %"); axes[1].legend(fontsize=8); plt.show()
    '''),
    md('''
    Solid lines: 2-bit activations; dashed: full precision. The two effects the paper's Fig. 1
    separates can be read off as differences of final test errors:
    '''),
    code('''
    final = {name: 100 * h["test"][-1] for name, (_, h) in runs.items()}
    relu_q = final["ReLU, 2-bit"] - final["ReLU, full precision"]
    clip_q = final["clip [0,1], 2-bit"] - final["clip [0,1], full prec."]
    pact_q = final["PACT, 2-bit"] - final["PACT, full precision"]
    print(f"cost of quantizing to 2 bits: ReLU {relu_q:+.1f} points, fixed clip {clip_q:+.1f}, PACT {pact_q:+.1f}")
    print(f"cost of the fixed clip at 1 in full precision (vs ReLU): "
          f"{final['clip [0,1], full prec.'] - final['ReLU, full precision']:+.1f} points")
    print("best 2-bit activation:", min((v, k) for k, v in final.items() if "2-bit" in k)[1])
    '''),
    md('''
    What to look for (the paper's observations; check them against the numbers above):

    * **Quantizing the ReLU costs accuracy**: its range follows the largest activations, so the
      four levels are too coarse for the bulk of them.
    * **A fixed clip makes quantization nearly free** (a small range leaves a small quantization
      error), **but the clip itself costs accuracy** in full precision: a clipping level that was
      not chosen for the layer throws information away.
    * **PACT gets both**: its full-precision version matches ReLU (a learned clip is harmless), and
      its 2-bit version is the best of the 2-bit activations.

    These are single runs on a 5 000-image sample for a few epochs, not the paper's 200-epoch
    CIFAR10-ResNet20 runs: a difference of a point or two between two lines is within the noise
    of a different seed.

    ### Watching $\\alpha$ learn

    Each PACT layer's $\\alpha$ over the training steps. It starts at 10, far above almost every
    activation, where the L2 decay and the few values that reach it are the only forces on it; it
    falls within a few dozen steps and settles at a level of its own for each layer, where the
    pull of the clipped values' gradients balances the decay.
    '''),
    code('''
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    for ax, name in zip(axes, ("PACT, 2-bit", "PACT, full precision")):
        trace = runs[name][1]["alphas"]
        for layer in trace[0]:
            ax.plot([step[layer] for step in trace], label=layer)
        ax.set_title(name); ax.set_xlabel("training step"); ax.set_yscale("log")
    axes[0].set_ylabel("alpha"); axes[0].legend(); plt.show()
    for name in ("PACT, 2-bit", "PACT, full precision"):
        print(f"{name:22s} final alphas:", {k: round(v, 2) for k, v in alphas(runs[name][0]).items()})
    '''),
    md('''
    ## Fig. 3 at small scale: cross-entropy versus $\\alpha$, layer by layer

    The paper's Fig. 3 takes a trained network and sweeps one layer's $\\alpha$ while every other
    layer stays as trained, recording the training loss. In full precision the loss falls as
    $\\alpha$ grows and then stays flat (clipping only hurts when it cuts useful values); with
    2-bit activations each layer has a clear minimum, because a large $\\alpha$ wastes the few
    levels. We repeat it with the two PACT networks trained above, on 1 000 training images
    (eval mode: batch-norm uses its running statistics).
    '''),
    code('''
    probe = train_set.subset(np.arange(min(len(train_set), 1000)))
    sweep = np.geomspace(0.1, 12, 9 if SMALL else 25)

    def loss_on(model, dataset):
        model.eval()
        with no_grad():
            total = sum(float(F.cross_entropy(model(Tensor(x)), y, reduction="sum").data)
                        for x, y in DataLoader(dataset, batch_size=500, shuffle=False))
        return total / len(dataset)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, name in zip(axes, ("PACT, full precision", "PACT, 2-bit")):
        model = runs[name][0]
        for layer_name, act in [(n, m) for n, m in model.named_modules() if n.startswith("act")]:
            trained = float(act.alpha.data)
            losses = []
            for value in sweep:
                act.alpha.data[...] = value
                losses.append(loss_on(model, probe))
            act.alpha.data[...] = trained
            line, = ax.semilogx(sweep, losses, label=layer_name)
            ax.axvline(trained, color=line.get_color(), ls=":", lw=1)
        model.train()
        ax.set_title(name); ax.set_xlabel("alpha of one layer (others as trained)")
        ax.set_ylim(top=min(ax.get_ylim()[1], 3))
    axes[0].set_ylabel("training cross-entropy"); axes[1].legend(); plt.show()
    '''),
    md('''
    Dotted lines mark the $\\alpha$ each layer learned. Left (full precision): the loss only rises
    when $\\alpha$ becomes small enough to clip what the layer needs; beyond that, any $\\alpha$ is
    as good. Right (2 bits): the curves are U-shaped, and the learned $\\alpha$ sits near the bottom
    of each U, which is what PACT's gradient is designed to find; the best level differs from
    layer to layer, which is why $\\alpha$ is per layer.

    Next: notebook 4 quantizes the weights too (DoReFa and SAWB), at 2, 3 and 4 bits, and looks at
    the first and last layers.

    **Try:** `alpha_decay` (the paper's $\\lambda_\\alpha$) of 0 and of 0.05; `Policy(abits=3)`;
    `act_quant="pact+"` (IBM's later variant that also gives $\\alpha$ a gradient from the
    rounding error inside $[0, \\alpha)$).
    '''),
]


# ======================================================================= 04 quantized training
QTRAIN = [
    md('''
    # 4. Training quantized networks: DoReFa vs SAWB weights, 2/3/4 bits, first and last layers

    Notebook 3 quantized the activations with PACT. Now the weights too. The PACT paper quantizes
    weights with **DoReFa**'s scheme; its follow-up (PACT + SAWB, arXiv 1807.06964) replaces it
    with **SAWB**, statistics-aware weight binning, which picks the quantization scale from two
    statistics of the weights. This notebook:

    1. writes both weight quantizers and compares how well each grid fits real weights,
    2. trains the Fashion-MNIST network at 2, 3 and 4 bits (weights and activations) with each,
    3. varies the precision of the first and last layers, a small-scale version of the paper's
       Table 2, and prints the measured numbers next to the paper's.

    Training uses the project's trainer, `tinypact.trainer.fit`, the function behind
    `python -m tinypact.train`; each run leaves a run directory with `checkpoint.npz`,
    `metrics.jsonl` and plots (notebook 5 exports one to the integer engine).
    '''),
    SETUP_TRAINING,
    md('''
    ## DoReFa weights

    DoReFa squashes the weights with $\\tanh$, maps them to $[0, 1]$ with the largest magnitude
    at the ends, quantizes uniformly and maps back to $[-1, 1]$ ($n = 2^k - 1$):
    $$u = \\frac{\\tanh(w)}{2\\max|\\tanh(w)|} + \\frac12, \\qquad
    w_q = 2\\,\\frac{\\mathrm{round}(u\\, n)}{n} - 1 \\in \\left\\{-1, -1 + \\tfrac{2}{n}, \\dots, 1\\right\\}.$$
    At 2 bits the levels are $\\{-1, -\\tfrac13, \\tfrac13, 1\\}$: four *odd* levels and no zero. The
    gradient is the straight-through estimator on the rounding, so it flows through $\\tanh$ and
    the max. The grid's scale is set by the single largest weight, so one outlier squeezes every
    other weight into the middle levels.

    ## SAWB weights

    SAWB clips the weights at a scale $\\alpha_w$ computed from two statistics, no search
    (coefficients fitted once for each bit width over many distributions):
    $$\\alpha_w = c_1 \\sqrt{\\mathrm{E}[w^2]} - c_2\\, \\mathrm{E}[|w|], \\qquad
    w_q = \\alpha_w \\left(2\\,\\frac{\\mathrm{round}(u\\,n)}{n} - 1\\right), \\quad u = \\frac{\\mathrm{clip}(w/\\alpha_w, -1, 1) + 1}{2},$$
    with $(c_1, c_2) = (3.12, 2.064)$ at 2 bits, $(7.509, 6.892)$ at 3 and $(12.68, 12.80)$ at 4.
    $\\alpha_w$ is recomputed from the weights at every step and frozen at export; the gradient is
    the identity (STE).

    Both quantizers on the weights of one conv layer (Kaiming-initialized, so roughly normal):
    '''),
    code('''
    from tinypact import Tensor
    from tinypact.quant import (SAWB_COEFFICIENTS, dorefa_weight, dorefa_weight_codes, sawb_scale,
                                sawb_weight)
    from tinypact.nn import Conv2d
    import tinypact.random

    tinypact.random.manual_seed(0)
    w = Conv2d(32, 64, 3).weight.data                       # 18 432 weights, std sqrt(2 / 288)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    axes[0].hist(w.ravel(), bins=100, color="lightgray")
    axes[0].vlines(np.unique(sawb_weight(w, 2).data), 0, 700, colors="tab:red", lw=2, label="SAWB 2-bit levels")
    axes[0].set_title("weights, with SAWB's 2-bit levels"); axes[0].legend()
    u = np.tanh(w) / (2 * np.abs(np.tanh(w)).max()) + 0.5
    axes[1].hist(u.ravel(), bins=100, color="lightgray")
    axes[1].vlines(np.arange(4) / 3, 0, 700, colors="tab:blue", lw=2, label="2-bit levels")
    axes[1].vlines([1 / 6, 1 / 2, 5 / 6], 0, 700, colors="k", ls=":", label="rounding thresholds")
    axes[1].set_title("DoReFa's u in [0, 1]: levels 0, 1/3, 2/3, 1"); axes[1].legend()
    plt.show()

    for bits in (2, 3, 4):
        codes, _ = dorefa_weight_codes(w, bits)
        share = np.bincount(codes.ravel(), minlength=2 ** bits) / codes.size
        print(f"DoReFa {bits}-bit: share of weights per level", np.round(share, 3))
    '''),
    md('''
    DoReFa's levels sit at fixed places in $[0, 1]$ while the weights crowd the centre: at 2 bits
    almost all weights fall on the two inner levels, so the layer is nearly *binary*. SAWB's
    scale follows the spread of the weights, so all four levels are used.

    Since a batch-norm (or the next layer's scale) follows every conv, what matters is the
    *pattern* of the quantized weights up to a scale. A fair measure is therefore the error after
    the best rescaling, $\\min_s \\lVert w - s\\, w_q \\rVert^2 / \\lVert w \\rVert^2$. And on
    $N(0, 1)$ weights, SAWB's closed-form scale can be compared with the best scale found by
    search:
    '''),
    code('''
    def relative_error(w, w_q):
        """min over s of |w - s w_q|^2 / |w|^2  (s = <w, w_q> / |w_q|^2)."""
        s = np.sum(w * w_q) / np.sum(w_q * w_q)
        return np.sum((w - s * w_q) ** 2) / np.sum(w * w)

    print(f"{'bits':>4s} {'DoReFa':>8s} {'SAWB':>8s}     relative error after the best rescaling (this layer)")
    for bits in (2, 3, 4):
        print(f"{bits:>4d} {relative_error(w, dorefa_weight(w, bits).data):>8.4f}"
              f" {relative_error(w, sawb_weight(w, bits).data):>8.4f}")

    gauss = np.random.default_rng(0).standard_normal(200_000)
    fig, ax = plt.subplots()
    scales = np.linspace(0.5, 4, 141)
    for bits in (2, 3, 4):
        n = 2 ** bits - 1
        def mse(a):
            u = np.clip(gauss / a, -1, 1) * 0.5 + 0.5
            return np.mean((gauss - a * (2 * np.floor(u * n + 0.5) / n - 1)) ** 2)
        errors = [mse(a) for a in scales]
        line, = ax.semilogy(scales, errors, label=f"{bits} bits")
        a_sawb = sawb_scale(gauss, bits)
        ax.plot(a_sawb, mse(a_sawb), "o", color=line.get_color())
        print(f"{bits}-bit on N(0,1): SAWB alpha_w = {a_sawb:.3f}, best by search = {scales[int(np.argmin(errors))]:.3f}")
    ax.set_xlabel("clip scale alpha_w"); ax.set_ylabel("mean squared error"); ax.legend()
    ax.set_title("N(0, 1) weights: dots = SAWB's closed-form scale"); plt.show()
    '''),
    md('''
    SAWB lands next to the best scale without searching, at every bit width; DoReFa's grid fits
    the weights worse at 2 bits. Whether that shows in accuracy is what training tells.

    ## Training at 2, 3 and 4 bits

    Each run trains the Fashion-MNIST network (`tinypact.models`, 3 conv layers + 1 linear) with
    PACT activations and DoReFa or SAWB weights at $k$ bits for every interior layer, and 8-bit
    weights for the first and last layers (the paper's choice, examined below). The recipe is the
    project's `sample` recipe (Adam, cosine decay), with PACT's $\\alpha$ given its own learning
    rate as in notebook 3. `fit(config, run_dir)` is exactly what
    `python -m tinypact.train --dataset sample --wbits 2 --abits 2 --weight-quant sawb ...` runs.
    '''),
    code('''
    import tempfile, time
    from pathlib import Path
    from tinypact.recipes import recipe
    from tinypact.trainer import fit

    RUNS = Path(tempfile.mkdtemp(prefix="tinypact-tutorial-4-"))
    if SMALL:   # the test suite: 200 training images, one epoch
        SIZE = dict(epochs=1, limit_train=200, val_size=50, limit_test=200)
    else:       # 4 500 training images (held-out validation: 500), all 1 000 test images
        SIZE = dict(epochs=6, limit_train=4500, val_size=500)

    def run(name, **settings):
        """Train one configuration; returns (test error, FitResult)."""
        config = recipe("sample", alpha_lr=0.2, **SIZE, **settings)
        start = time.perf_counter()
        result = fit(config, RUNS / name, progress=False, log=lambda line: None)
        print(f"{name:18s} test error {result.test_error:6.1%}   ({time.perf_counter() - start:.0f} s)")
        return result.test_error, result

    results = {"float": run("float", wbits=32, abits=32, first_last_bits=32)}
    for bits in (2, 3, 4):
        for quant in ("dorefa", "sawb"):
            results[f"{quant} {bits}-bit"] = run(f"{quant}-{bits}bit", wbits=bits, abits=bits,
                                                 weight_quant=quant)
    '''),
    code('''
    fig, ax = plt.subplots()
    x = np.arange(3)
    for i, quant in enumerate(("dorefa", "sawb")):
        errors = [100 * results[f"{quant} {b}-bit"][0] for b in (2, 3, 4)]
        bars = ax.bar(x + (i - 0.5) * 0.35, errors, 0.35, label=f"{quant} weights, PACT activations")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.axhline(100 * results["float"][0], color="k", ls="--", label="float")
    ax.set_xticks(x, ["W2/A2", "W3/A3", "W4/A4"]); ax.set_ylabel("test error %")
    ax.set_title("Fashion-MNIST sample, first/last layer weights at 8 bits"); ax.legend(fontsize=8)
    plt.show()
    '''),
    md('''
    What to look for: the error should fall as the bits grow and come close to the float line by
    4 bits, as in the paper's Table 1 (CIFAR10-ResNet20 with PACT: 0.897, 0.911, 0.913 top-1 at 2,
    3, 4 bits against 0.916 in float). Whether DoReFa or SAWB weights do better at 2 bits is the
    SAWB paper's question (it reports SAWB ahead, on ImageNet-scale networks). Here each bar is a
    single run on 4 500 images for a few epochs, and a gap of a few points between two bars can
    change sign with another seed: read the bars as this run's measurements, not as a verdict.
    `benchmarks/accuracy_study.py` makes the comparison on the full Fashion-MNIST data set.

    ## First and last layers (Table 2 at small scale)

    The first layer sees the raw image and the last one produces the class scores; both are
    small (here 0.11 M of the 1.9 M MACs), and both are sensitive. The PACT paper's Table 2
    (CIFAR10-ResNet20, 2-bit interior layers) gives the validation error with the first and last
    layers at 2, 4, 8 and 32 bits: **21.0, 12.9, 11.1, 10.9 %**. In tinypact `first_last_bits`
    sets the *weight* precision of those two layers (the first layer's input is the 8-bit image,
    and the input of the last layer is an ordinary interior activation).
    '''),
    code('''
    paper = {2: 21.0, 4: 12.9, 8: 11.1, 32: 10.9}
    first_last = {8: results["dorefa 2-bit"]}
    for fl in (2, 4, 32):
        first_last[fl] = run(f"dorefa-2bit-fl{fl}", wbits=2, abits=2, first_last_bits=fl)

    print(f"{'first/last bits':>15s} {'tinypact test error %':>22s} {'paper (CIFAR10-ResNet20) %':>27s}")
    for fl in (2, 4, 8, 32):
        print(f"{fl:>15d} {100 * first_last[fl][0]:>22.1f} {paper[fl]:>27.1f}")

    fig, ax = plt.subplots()
    labels = ["2", "4", "8", "32 (float)"]
    ax.plot(labels, [100 * first_last[fl][0] for fl in (2, 4, 8, 32)], "o-", label="tinypact, Fashion-MNIST sample")
    ax.plot(labels, [paper[fl] for fl in (2, 4, 8, 32)], "s--", label="paper, CIFAR10-ResNet20")
    ax.set_xlabel("first and last layer weight bits (interior: W2/A2, DoReFa + PACT)")
    ax.set_ylabel("error %"); ax.legend(); plt.show()
    '''),
    md('''
    In the paper, quantizing the first and last layers to 2 bits costs 10 points, while 8 bits is
    within 0.2 of float; that is why 8 bits is tinypact's default (`first_last_bits=8`). This
    network is small and the task easier, so expect smaller gaps, and the same noise as above: the
    pattern to look for is that 2-bit first and last layers are clearly worse, while 8 bits and
    float are about equal. Notebook 6 puts a price on the other side: on the accelerator the two
    8-bit layers cost about 15-30 % of the run time at 2 bits.

    Each run directory holds what `python -m tinypact.train` writes: the checkpoint, the metrics
    and the plots. The per-epoch history is also in the `FitResult`:
    '''),
    code('''
    error, result = results["sawb 2-bit"]
    for record in result.history:
        print(f"epoch {record['epoch']}: train error {record['train_error']:.1%}, "
              f"validation error {record['val_error']:.1%}, alphas "
              + ", ".join(f"{k} {v:.2f}" for k, v in record["alphas"].items()))
    print("files:", sorted(p.name for p in result.run_dir.iterdir()))
    '''),
    md('''
    Next: notebook 5 exports a trained 2-bit network to the integer engine and checks that integer
    arithmetic alone reproduces it exactly.

    **Try:** `weight_quant="sawb0"` (zero-aligned SAWB: a ternary $\\{-a, 0, a\\}$ grid at 2 bits);
    `abits=4` with `wbits=2`; more epochs and the full data set (`recipe("fashion-mnist", ...)`).
    '''),
]


# ========================================================================= 05 integer inference
INTEGER = [
    md('''
    # 5. Integer inference: export, codes and scales, bit-planes and the popcount MAC

    Quantization-aware training *simulates* low precision in float32 ("fake quantization"). The
    point of it is to run the network with integers only. This notebook takes a 2-bit network
    trained by tinypact and:

    1. exports it to the integer engine's `.tpq` file (`integer_engine.export`),
    2. looks at what is inside: weight codes and scales, and the integer thresholds into which
       batch-norm, the scales and PACT's clip and rounding all fold,
    3. computes a dot product the way the engine does, with bit-planes, AND and popcount,
    4. checks that the engine is **bit-exact** against a float64 reference, layer by layer, and
       how closely it follows tinypact's float32 model,
    5. compares size and speed.

    `integer_engine` never imports `tinypact`: the checkpoint file is the only contract
    (`docs/ARCHITECTURE.md`). The same steps run from the command line with
    `python -m integer_engine export RUN -o model.tpq`, then `verify` and `run`; the file format
    and the folding are specified in `docs/model-format.md`.
    '''),
    SETUP_TRAINING,
    md('''
    ## A 2-bit network to export

    PACT activations and SAWB weights at 2 bits, the first and last layers' weights at 8 bits,
    trained on the bundled sample with the project's trainer (notebook 4).
    '''),
    code('''
    import tempfile, time
    from pathlib import Path
    from tinypact import Tensor, no_grad
    from tinypact.data import load_dataset
    from tinypact.recipes import recipe
    from tinypact.trainer import fit

    RUNS = Path(tempfile.mkdtemp(prefix="tinypact-tutorial-5-"))
    size = dict(epochs=1, limit_train=300, val_size=100) if SMALL else dict(epochs=4, limit_train=4500, val_size=500)
    config = recipe("sample", wbits=2, abits=2, weight_quant="sawb", alpha_lr=0.2, **size)
    result = fit(config, RUNS / "w2a2", progress=False, log=lambda line: None)
    model = result.model.eval()
    test_set = load_dataset("sample", "test")
    print(config.describe_policy())
    print(f"tinypact (float32 fake-quant) test error: {result.test_error:.1%}")
    '''),
    md('''
    ## Export: from a checkpoint to integers

    The checkpoint holds float32 parameters and the network as a graph (`conv`, `bn`, `act`,
    `maxpool`, ...). Export lowers it to integer layers:

    * **weights** become unsigned codes $j \\in [0, n_w]$, with $w_q = s_w\\,(2j - n_w)$ and one
      scale per layer (SAWB: $s_w = \\alpha_w / n_w$): the same codes the training quantizer used,
      recomputed in float64 from the checkpoint;
    * **activations** are codes $q \\in [0, n]$ with value $q\\,\\alpha/n$ (PACT) or
      $\\text{pixel}/255$ (the input image);
    * a conv accumulates an **integer** $\\text{acc} = \\sum q \\cdot (2j - n_w)$; everything after it
      (the scales $s_w$ and $\\alpha/n$, the conv bias, batch-norm, PACT's clip and rounding) is,
      per output channel $c$, an increasing (or decreasing) affine map followed by round half up:
      $$\\text{code} = \\mathrm{clip}\\big(\\lfloor \\text{acc}\\cdot m_c + a_c + \\tfrac12 \\rfloor,\\, 0,\\, n\\big),$$
      which is exactly the number of **thresholds** $T_{c,1} \\le \\dots \\le T_{c,n}$ that the
      accumulator reaches (FINN's *MultiThreshold*). The engine stores $n$ integers per channel
      and compares; no float, no multiplier, no rounding at run time. This is where the
      round-half-up rule pays off: $\\lfloor v + \\frac12 \\rfloor \\ge t \\iff v \\ge t - \\frac12$,
      a threshold.
    * A max-pool between batch-norm and the activation moves after the requantization (the
      requantizer is monotone, so $\\max$ commutes with it) and runs on codes.
    '''),
    code('''
    from integer_engine.export import export_checkpoint
    from integer_engine.format import load_model, save_model

    integer_model = export_checkpoint(result.run_dir)
    save_model(integer_model, RUNS / "w2a2.tpq")
    integer_model = load_model(RUNS / "w2a2.tpq")          # checksummed, validated on load

    print(f"{'layer':8s} {'kind':8s} {'output shape':>13s} {'w bits':>6s} {'in bits':>7s} {'largest code':>12s}  arrays")
    for layer in integer_model.layers:
        a = layer.attrs
        arrays = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in layer.arrays.items())
        print(f"{a['name']:8s} {a['kind']:8s} {str(tuple(a['out_shape'])):>13s} {str(a.get('wbits', '')):>6s}"
              f" {str(a.get('abits', '')):>7s} {a['out_max']:>12d}  {arrays}")
    '''),
    md('''
    Notice: `conv0` (the first layer) reads 8-bit pixels with 8-bit weights and writes 2-bit codes
    (its output *is* the first PACT activation); `conv1` and `conv2` are 2-bit x 2-bit; the global
    average pool becomes a sum of 49 codes (its $1/49$ folds into the next layer's scale); `fc`
    produces integer logits (argmax needs no scale).

    ### Codes and scales, checked against tinypact

    The weight codes of `conv1` reproduce tinypact's quantized weights exactly, and the thresholds
    of one channel turn accumulators into codes:
    '''),
    code('''
    from tinypact.quant import sawb_weight_codes

    conv1 = integer_model.layer("conv1")
    j, n_w, s_w = conv1.arrays["weight"].astype(np.int64), conv1.attrs["n_w"], conv1.attrs["w_scale"]
    tp_codes, tp_scale = sawb_weight_codes(model.conv1.weight.data, 2)
    w_q_engine = s_w * (2 * j - n_w)                    # one scale per layer: s_w = alpha_w / n_w
    print("weight codes equal tinypact's:", np.array_equal(j, tp_codes),
          f"  s_w * n_w = {s_w * n_w:.6f}, tinypact's SAWB alpha_w = {tp_scale:.6f}")
    print("levels used:", np.unique(w_q_engine).round(4), " (2-bit SAWB: -a, -a/3, a/3, a)")
    print("tinypact's quantized weights equal s_w (2j - n_w):",
          np.allclose(model.conv1.quantized_weight_array(), w_q_engine, rtol=1e-6, atol=0))

    c = 0
    T, d = conv1.arrays["thresholds"][c], conv1.arrays["direction"][c]
    print(f"channel {c}: thresholds {T.tolist()}, direction {int(d):+d}")
    for acc in (T[0] - 1, T[0], T[1], T[2] - 1, T[2]):
        print(f"   accumulator {int(acc):6d} -> code {int(np.sum(d * acc >= d * T))}")
    '''),
    md('''
    Every output channel has its own staircase: batch-norm's scale and shift, the weight scale and
    alpha differ per channel, and a negative batch-norm scale turns the staircase around
    (direction $-1$: larger accumulators give *smaller* codes). The plot draws the staircases of a
    few channels of `conv1` over the range of accumulator values they actually see on 200 test
    images (the shaded histogram: channel 0's accumulators):
    '''),
    code('''
    import matplotlib.pyplot as plt
    from integer_engine.executor import run_model

    # conv1's accumulators on real images: its integer input codes (the engine's output of the
    # layer before it), lowered to windows, times the odd weight levels 2j - n_w.
    outs = run_model(integer_model, test_set.images[:200], collect=True).outputs
    before = conv1.attrs["inputs"][0]
    x_codes = outs[before].astype(np.int64)
    pad, k = conv1.attrs["padding"], j.shape[-1]
    xp = np.pad(x_codes, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))   # N, C, H, W, k, k
    accs = np.einsum("nchwij,ocij->nohw", windows, 2 * j - n_w, optimize=True)

    fig, ax = plt.subplots(figsize=(8, 3.6))
    first = conv1.arrays["thresholds"][:4]                       # every threshold on the plot
    lo = min(np.percentile(accs[:, :4], 0.5), first.min() - 3)
    hi = max(np.percentile(accs[:, :4], 99.5), first.max() + 3)
    grid = np.arange(int(lo), int(hi) + 1)
    ax2 = ax.twinx()
    ax2.hist(accs[:, 0].ravel(), bins=60, color="0.85"); ax2.set_yticks([])
    ax.set_zorder(ax2.get_zorder() + 1); ax.patch.set_visible(False)
    for ch in range(4):
        T, d = conv1.arrays["thresholds"][ch], conv1.arrays["direction"][ch]
        code = (d * grid[:, None] >= d * T[None, :]).sum(1)
        ax.step(grid, code + 0.04 * ch, where="post", label=f"channel {ch} (direction {int(d):+d})")
    ax.set_xlabel("integer accumulator of conv1"); ax.set_ylabel("output code")
    ax.set_yticks(range(4)); ax.legend(fontsize=8, loc="upper left")
    ax.set_title("requantization = counting thresholds, one staircase per channel"); plt.show()

    # The staircase is the engine's: applied to these accumulators it gives the engine's codes.
    T0, d0 = conv1.arrays["thresholds"][0], conv1.arrays["direction"][0]
    codes0 = (d0 * accs[:, 0, ..., None] >= d0 * T0).sum(-1)
    print("channel 0's staircase on these accumulators == the engine's conv1 codes:",
          np.array_equal(codes0, outs["conv1"][:, 0]))
    '''),
    md('''
    ## Bit-planes and the popcount MAC

    How does a machine multiply 2-bit numbers fast? Write each code in binary,
    $a = \\sum_i 2^i a_i$ and $j = \\sum_k 2^k j_k$, and store each bit position of a whole row
    as a bit-vector (a **bit-plane**, 64 elements per `uint64` word). A dot product of two rows
    becomes
    $$a \\cdot j = \\sum_{i, k} 2^{i + k}\\; \\mathrm{popcount}(a_i \\,\\&\\, j_k),$$
    so one 64-bit AND + POPCNT does 64 one-bit multiply-accumulates, and a $2 \\times 2$-bit dot
    product costs 4 of them per 64 elements. The weights' odd levels $2j - n_w$ need one more
    term: $a \\cdot (2j - n_w) = 2\\,(a \\cdot j) - n_w \\sum a$.

    By hand on a small example, then with the engine's kernel:
    '''),
    code('''
    from integer_engine import bitpack, kernels

    rng = np.random.default_rng(0)
    K = 150
    a = rng.integers(0, 4, size=(3, K))            # 2-bit activation codes, 3 rows
    jw = rng.integers(0, 4, size=(5, K))           # 2-bit weight codes, 5 output channels
    a_planes, w_planes = bitpack.bit_planes(a, 2), bitpack.bit_planes(jw, 2)
    print("activation planes:", a_planes.shape, a_planes.dtype, " (bits, rows, ceil(K/64) words)")
    print("row 0, plane 0, word 0:", format(int(a_planes[0, 0, 0]), "064b")[::-1][:32], "...")
    print("row 0 codes, low bit:  ", "".join(str(v & 1) for v in a[0, :32]), "...")

    def popcount_dot(ap, wp):
        """sum over planes i, k of 2^(i+k) * popcount(a_i AND w_k), one row pair."""
        return sum((1 << (i + k)) * int(np.bitwise_count(ap[i] & wp[k]).sum())
                   for i in range(ap.shape[0]) for k in range(wp.shape[0]))

    by_hand = popcount_dot(a_planes[:, 0], w_planes[:, 0])
    engine = kernels.bitserial_gemm(a_planes, w_planes)
    print("a . j by hand:", by_hand, "  engine kernel:", engine[0, 0], "  integer matmul:", (a @ jw.T)[0, 0])
    print("whole GEMM equals a @ j.T:", np.array_equal(engine, a @ jw.T))
    odd = kernels.affine_weight_gemm(a_planes, w_planes, 2, 3)      # a . (2j - 3)
    print("odd levels 2j - 3:", np.array_equal(odd, a @ (2 * jw - 3).T))
    '''),
    md('''
    ## The bit-exact check

    "Bit-exact" means the engine (bit-planes, popcounts, thresholds) and a plain float64 NumPy
    reference that evaluates the requantization formula directly (`integer_engine.reference`)
    produce the **same integers in every layer, for every image**. Float64 holds every
    accumulator exactly (export bounds them below $2^{31}$), so there is no tolerance: equal or
    not.
    '''),
    code('''
    from integer_engine.executor import run_model
    from integer_engine.reference import run_reference

    images = test_set.images[:200 if SMALL else 1000]          # uint8 pixels: the engine's input
    labels = test_set.labels[:len(images)]
    engine_out = run_model(integer_model, images, collect=True)
    reference = run_reference(integer_model, images)
    for name, out in engine_out.outputs.items():
        same = np.array_equal(out.astype(np.int64), reference[name].astype(np.int64))
        print(f"{name:8s} {str(out.shape):18s} identical to the float64 reference: {same}")
    assert all(np.array_equal(out.astype(np.int64), reference[k].astype(np.int64))
               for k, out in engine_out.outputs.items())
    '''),
    md('''
    And against the network as tinypact trained it? tinypact's forward pass runs the same
    quantizers in float32. The first activation's codes and the predictions can be compared
    directly. They agree on every code, or nearly: a difference can only come from an activation
    that sits within float32 rounding of a threshold, where float32 and exact arithmetic may round
    to different codes (this is why the engine is specified against float64 and integers, not
    against the float32 training graph).
    '''),
    code('''
    from tinypact.quant import activation_codes

    with no_grad():
        x = Tensor(images.astype(np.float32) / np.float32(255))
        logits_float = model(x).data
        act0 = activation_codes(model.bn0(model.conv0(x)), model.act0.alpha.data, 2)
    same_codes = np.mean(act0 == engine_out.outputs["conv0"])
    same_predictions = np.mean(logits_float.argmax(1) == engine_out.predictions)
    print(f"first-layer activation codes equal to tinypact's: {same_codes:.4%}")
    print(f"predictions equal to tinypact's:                  {same_predictions:.2%}")
    print(f"test error: tinypact float32 {np.mean(logits_float.argmax(1) != labels):.1%}, "
          f"integer engine {np.mean(engine_out.predictions != labels):.1%}")
    '''),
    md('''
    ## Size and speed

    The `.tpq` file stores one byte per weight code (simple, not bit-packed on disk) and the
    thresholds; the float checkpoint stores float32 weights plus the optimizer state. In memory
    the engine packs the 2-bit weights into bit-planes: 2 bits per weight.
    '''),
    code('''
    import os
    checkpoint_bytes = os.path.getsize(result.run_dir / "checkpoint.npz")
    tpq_bytes = os.path.getsize(RUNS / "w2a2.tpq")
    float_weight_bytes = sum(p.size * 4 for p in model.parameters())
    packed_bytes = sum(layer.arrays["weight"].size * layer.attrs["wbits"] / 8 for layer in integer_model.compute_layers)
    print(f"checkpoint.npz (float32 + optimizer state): {checkpoint_bytes / 1024:7.1f} KiB")
    print(f"float32 parameters alone:                  {float_weight_bytes / 1024:7.1f} KiB")
    print(f"model.tpq (codes as uint8, thresholds):    {tpq_bytes / 1024:7.1f} KiB")
    print(f"weight codes bit-packed at their widths:   {packed_bytes / 1024:7.1f} KiB")
    '''),
    md('''
    Speed, measured here side by side on the same images (after a warm-up run, since Numba
    compiles the kernels on first use). These are *this machine, now* figures: the ratios are the
    information, and the repository's benchmark scripts (`benchmarks/`) are where speed claims are
    made.
    '''),
    code('''
    def best_time(fn, repeat=3):
        times = []
        for _ in range(repeat):
            start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
        return min(times)

    batch = images[:200]
    run_model(integer_model, batch[:8])                           # warm-up: compile the kernels
    t_engine = best_time(lambda: run_model(integer_model, batch))
    t_reference = best_time(lambda: run_reference(integer_model, batch), repeat=1)
    with no_grad():
        t_float = best_time(lambda: model(Tensor(batch.astype(np.float32) / np.float32(255))))
    print(f"{len(batch)} images: integer engine {t_engine * 1e3:7.1f} ms,"
          f" tinypact float32 fake-quant {t_float * 1e3:7.1f} ms, float64 reference {t_reference * 1e3:7.1f} ms")

    stats = run_model(integer_model, batch).stats
    print(f"{'layer':8s} {'method':10s} {'MACs':>12s} {'ms':>8s}")
    for s in stats:
        print(f"{s.name:8s} {s.method:10s} {s.macs:>12,d} {s.seconds * 1e3:>8.2f}")
    '''),
    md('''
    The 2x2-bit layers run as popcount GEMMs (`bitserial`), the 8-bit first and last layers as
    integer GEMMs (`int`), which the engine hands to BLAS in float32: exact here, because every
    partial sum is an integer below $2^{24}$ (the layer's accumulator bound, known at export). On a network this small, per-layer overheads (im2col, packing,
    pooling) weigh as much as the MACs; the bit-serial kernels pay off on large GEMMs, where one
    64-bit AND+POPCNT does 16 two-bit MACs (see `benchmarks/bitgemm.py` for measured GMAC/s).

    Next: notebook 6 asks the same question for custom hardware: what does 2-bit arithmetic buy on
    a systolic-array accelerator?

    **Try:** export a DoReFa network (`weight_quant="dorefa"`) and compare its weight scale with
    SAWB's; `python -m integer_engine inspect` on the `.tpq` file; train at 4 bits and watch the
    engine switch the 4x4-bit layers to the integer GEMM (more than 9 popcount passes).
    '''),
]


# ============================================================================ 06 accelerator
ACCELERATOR = [
    md('''
    # 6. The accelerator: folds, cycles and memory traffic, and why low precision is super-linear

    Section 6 of the PACT paper asks what quantization buys in hardware. Its answer (Fig. 6): on
    an accelerator of fixed area, memory and DRAM bandwidth, going from 16-bit to 4-bit MACs gives
    more than the 4x the extra PEs promise when bandwidth is the limit, because at low precision
    more of each layer's data fits on chip and DRAM transfers disappear: a **super-linear** speedup.

    This notebook builds that argument with tinypact's analytic model of a systolic array
    (`integer_engine.accelerator`), whose compute part reproduces SCALE-Sim cycle for cycle and
    whose memory part counts every operand at its bit width:

    1. a convolution is a matrix product; how it is cut into *folds* on an `R x C` array,
    2. cycles, mapping efficiency and the three dataflows (OS, WS, IS),
    3. why a bigger array is not proportionally faster,
    4. memory: SRAM capacity in elements grows as bits shrink, DRAM traffic falls faster than bits,
    5. iso-area scaling and the paper's Fig. 6, with first and last layers at 8 bits.
    '''),
    SETUP,
    md('''
    ## A convolution is a matrix product

    A conv layer with an `H x W x C` input, `K` filters of `R_f x S_f x C` and stride `s` computes,
    for each of its $N_{px} = E_h E_w$ output pixels and each filter, a dot product over the
    window $W = R_f S_f C$. That is the GEMM $(N_{px} \\times W)\\,(W \\times K)$ with
    $N_{px}\\,W\\,K$ multiply-accumulates (MACs). SCALE-Sim describes a layer by exactly these
    numbers (a *topology* CSV row); tinypact ships the topologies of the networks it trains.
    The output size uses SCALE-Sim's no-padding rule $E = \\lceil (H - R_f + s)/s \\rceil$, so a
    padded layer is given by its padded input size (SVHN's `conv1` is 18x18 padded to 20x20).
    '''),
    code('''
    from integer_engine.accelerator.systolic import Layer, SystolicArray, simulate_layer, simulate_network
    from integer_engine.accelerator.scalesim import read_topology

    svhn = read_topology("svhn")           # the paper's SVHN network, 7 conv + 1 FC
    print(f"{'layer':6s} {'input':>10s} {'filter':>8s} {'K':>4s} {'Npx':>5s} {'W':>5s} {'MACs':>11s}")
    for l in svhn:
        print(f"{l.name:6s} {l.ifmap_h:>3d}x{l.ifmap_w:<3d}x{l.channels:<3d} {l.filter_h}x{l.filter_w:<6d}"
              f"{l.num_filters:>4d} {l.ofmap_pixels:>5d} {l.window:>5d} {l.macs:>11,d}")
    print(f"total: {sum(l.macs for l in svhn):,d} MACs per image")
    '''),
    md('''
    ## Folds: cutting the GEMM to the array's size

    A systolic array is a grid of `R x C` processing elements (PEs), each doing one MAC per cycle
    and passing operands to its neighbours. A *dataflow* decides which operand stays put in the PEs
    and which two GEMM dimensions are spread over the grid (spatially) while the third streams
    through (temporally):

    | dataflow | stays in the PE | rows $S_r$ | columns $S_c$ | streamed $T$ |
    |---|---|---|---|---|
    | OS (output stationary) | partial sums | $N_{px}$ | $K$ | $W$ |
    | WS (weight stationary) | weights | $W$ | $K$ | $N_{px}$ |
    | IS (input stationary) | inputs | $W$ | $N_{px}$ | $K$ |

    The $S_r \\times S_c$ spatial matrix rarely matches the array: it is cut into
    $\\lceil S_r/R\\rceil \\cdot \\lceil S_c/C\\rceil$ **folds**, run one after the other. Each fold
    costs the stream length plus the time to fill and drain the array:
    $$\\text{cycles per fold} = T + R + C - 2 \\;(\\text{OS}), \\qquad T + 2R + C - 2 \\;(\\text{WS, IS: } +R \\text{ to preload the stationary tile}),$$
    $$\\text{compute cycles} = \\text{folds} \\cdot \\text{cycles per fold} - 1 .$$
    The last fold in each direction is usually partly empty; the **mapping efficiency**
    $S_r S_c / (\\text{folds}\\cdot R C)$ is the fraction of PEs that hold real work.
    Here is SVHN's first layer, `conv0`, under WS on a 32x32 array:
    '''),
    code('''
    from matplotlib.patches import Rectangle

    def draw_folds(ax, sr, sc, rows, cols, title):
        ax.add_patch(Rectangle((0, 0), sc, sr, color="tab:blue", alpha=0.35, label="work (Sr x Sc)"))
        for i in range(-(-sr // rows)):
            for j in range(-(-sc // cols)):
                ax.add_patch(Rectangle((j * cols, i * rows), cols, rows, fill=False, lw=1.2))
        ax.set_xlim(0, -(-sc // cols) * cols); ax.set_ylim(-(-sr // rows) * rows, 0)
        ax.set_xlabel("Sc"); ax.set_ylabel("Sr"); ax.set_title(title, fontsize=10); ax.grid(False)
        ax.set_aspect("equal")

    conv0 = svhn[0]
    array = SystolicArray(rows=32, cols=32, dataflow="ws")
    report = simulate_layer(conv0, array)
    sr, sc, t = conv0.window, conv0.num_filters, conv0.ofmap_pixels     # WS mapping
    folds = -(-sr // 32) * -(-sc // 32)
    by_hand = folds * (t + 2 * 32 + 32 - 2) - 1
    print(f"WS: Sr = W = {sr}, Sc = K = {sc}, T = Npx = {t}")
    print(f"folds = ceil({sr}/32) * ceil({sc}/32) = {folds}   (model: {report.folds})")
    print(f"compute cycles = {folds} * ({t} + 2*32 + 32 - 2) - 1 = {by_hand}   (model: {report.compute_cycles})")
    print(f"mapping efficiency = {sr}*{sc} / ({folds}*32*32) = {sr * sc / (folds * 1024):.3f}"
          f"   (model: {report.mapping_efficiency:.3f})")

    fig, ax = plt.subplots(figsize=(5, 4))
    draw_folds(ax, sr, sc, 32, 32, f"{conv0.name}: {folds} folds of a 32x32 array (WS)")
    ax.legend(loc="lower right"); plt.show()
    '''),
    md('''
    Each outlined square is one fold. The last row of folds holds only $75 - 64 = 11$ of its 32
    rows and the last column $48 - 32 = 16$ of 32, so 41 % of the PE-cycles are wasted. The stream,
    on the other hand, is long ($T = 1296$ pixels), so the $2R + C - 2 = 94$ cycles each fold
    spends filling and draining the array hardly matter. Late layers are the opposite case.

    ### Checking against SCALE-Sim

    SCALE-Sim's own regression output for AlexNet's first layer (224x224x3 input, 96 filters of
    11x11, stride 4) on a 32x32 WS array is 112 283 cycles, mapping efficiency 94.53 %, overall
    utilization 91.68 %. The model gives:
    '''),
    code('''
    alexnet_conv1 = Layer("conv1", 224, 224, 11, 11, 3, 96, stride=4)
    r = simulate_layer(alexnet_conv1, SystolicArray(32, 32, "ws"))
    print(f"folds {r.folds}, cycles {r.compute_cycles}, mapping efficiency {r.mapping_efficiency:.5%}, "
          f"overall utilization {r.overall_util:.3%}")
    assert (r.compute_cycles, round(r.mapping_efficiency * 100, 5)) == (112283, 94.53125)
    '''),
    md('''
    ## The three dataflows on a whole network

    The same network costs very different numbers of cycles depending on which GEMM dimension
    streams. A layer with few output pixels (the late SVHN layers: 7x7, 5x5, 1x1) has a short
    WS stream, so WS spends most of its time filling the array; OS streams over the window $W$,
    which is long exactly there.
    '''),
    code('''
    dataflows = ("os", "ws", "is")
    cycles = {df: [r.total_cycles for r in simulate_network(svhn, SystolicArray(32, 32, df)).layers]
              for df in dataflows}
    x = np.arange(len(svhn))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for i, df in enumerate(dataflows):
        ax.bar(x + (i - 1) * 0.27, cycles[df], 0.27, label=f"{df.upper()}: {sum(cycles[df]):,} cycles")
    ax.set_xticks(x, [l.name for l in svhn]); ax.set_ylabel("cycles (32x32 array)")
    ax.set_title("SVHN network, one image"); ax.legend(); plt.show()
    '''),
    md('''
    Notice `conv6` (5x5x128 -> 512 filters on a 5x5 input, a single output pixel): under WS it has
    $S_r = W = 3200$, $S_c = 512$, i.e. 100 x 16 = 1600 folds, each streaming a single pixel.

    ## A bigger array is not proportionally faster

    Quantization's promise is more PEs in the same silicon. But each layer's spatial matrix is
    finite: as the array grows, more of it sits idle in the partial last folds and the fill/drain
    overhead $R + C$ grows while the stream $T$ does not. Utilization = MACs / (cycles x PEs):
    '''),
    code('''
    sizes = [8, 16, 32, 64, 128] if SMALL else [8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    resnet50 = read_topology("resnet50")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, net in (("SVHN", svhn), ("ResNet-50", resnet50)):
        reports = [simulate_network(net, SystolicArray(n, n, "os")) for n in sizes]
        speedup = [reports[0].total_cycles / r.total_cycles for r in reports]
        ax0.loglog(sizes, speedup, "o-", label=name)
        ax1.semilogx(sizes, [100 * r.overall_util for r in reports], "o-", label=name)
    ax0.loglog(sizes, [(n / sizes[0]) ** 2 for n in sizes], "k--", label="PE count")
    ax0.set_xlabel("array side (n x n)"); ax0.set_ylabel(f"speedup over {sizes[0]}x{sizes[0]}")
    ax1.set_xlabel("array side (n x n)"); ax1.set_ylabel("utilization %")
    ax0.legend(); ax1.legend(); fig.suptitle("OS dataflow, unlimited bandwidth"); plt.show()
    '''),
    md('''
    The small SVHN network (42 M MACs on tiny feature maps) stops speeding up long before the PE
    count stops growing; ResNet-50 (224x224 images, 4 G MACs) keeps the array busy much longer.
    Keep this in mind when reading the iso-area results below: the extra PEs of a 2-bit array
    only help a network with enough parallel work.

    ## Memory: precision changes what fits on chip

    SCALE-Sim stores every element in one byte. tinypact's model counts each operand at its bit
    width: an SRAM of $S$ KB, double-buffered (half computes, half prefetches), keeps
    $S \\cdot 1024 \\cdot 8 / 2 / b$ elements of $b$ bits. Each operand's DRAM traffic follows the
    fold loop: an operand the outer loop sweeps $n$ times costs
    $$X + (n-1)\\max(0,\\, X - B)$$
    bytes ($X$ its size, $B$ the live half of its SRAM): what fits is fetched once, the rest
    again on every sweep. Partial sums that outgrow the output SRAM go to DRAM and come back.
    So halving the bits does *at least* halve the traffic, and more than halve it once a
    re-fetched operand starts to fit. Same 32x32 WS array, ResNet-50, all layers at $b$ bits:
    '''),
    code('''
    from integer_engine.accelerator.sweep import precision_layers

    bit_widths = (16, 8, 4, 2)
    traffic = {}
    for bits in bit_widths:
        report = simulate_network(precision_layers(resnet50, bits, first_last_bits=None),
                                  SystolicArray(32, 32, "ws"))
        traffic[bits] = {op: report.dram_bytes(op) / 1e6 for op in ("ifmap", "filter", "ofmap")}

    print(f"{'bits':>4s} {'ifmap MB':>9s} {'filter MB':>9s} {'ofmap+psum MB':>13s} {'total MB':>9s} {'vs 16-bit':>9s}")
    for bits, t in traffic.items():
        total = sum(t.values())
        print(f"{bits:>4d} {t['ifmap']:>9.1f} {t['filter']:>9.1f} {t['ofmap']:>13.1f} {total:>9.1f}"
              f" {sum(traffic[16].values()) / total:>8.1f}x   (bits alone: {16 / bits:.0f}x)")
    '''),
    md('''
    Going from 16 to 4 bits shrinks every element 4x. The weights, read once under WS, fall
    exactly 4x; the input traffic falls about 5.7x: at 4 bits whole feature maps fit in the 32 KB
    live half of the input SRAM and stop being re-fetched for every column fold. The output side
    falls less than 4x: it is dominated by spilled partial sums, which stay wide
    ($w + a + \\lceil\\log_2 W\\rceil$ bits). On the same array, the total is about linear in the
    bits; the super-linear part comes once the array grows too (below).

    ## Iso-area: how many PEs fit

    The paper compares accelerators of the *same area*. A $w \\times a$-bit MAC needs a
    multiplier that grows as $w \\cdot a$, plus an adder and registers that grow linearly; the
    model (`integer_engine.accelerator.area`) is
    $$\\text{area}(w, a) = w a + \\alpha\\,\\frac{w + a}{2}, \\qquad \\alpha = 50/3,$$
    with $\\alpha$ calibrated to the paper's statement that a 2-bit MAC is about 14x denser than a
    16-bit one. The array keeps its square shape, both sides scaled by $\\sqrt{\\text{density}}$.
    '''),
    code('''
    from integer_engine.accelerator.area import density, iso_area_array, mac_area

    for bits in bit_widths:
        rows, cols = iso_area_array(32, 32, bits)
        print(f"{bits:>2d}-bit MAC: area {mac_area(bits):7.1f}, density {density(bits):5.2f}x "
              f"-> {rows}x{cols} array ({rows * cols:,} PEs)")
    '''),
    md('''
    (The paper also quotes "4x peak FLOPs" from 16 to 4 bits; no smooth area model gives both that
    and 14x at 2 bits, so this one is calibrated to the density and has a 6.3x peak at 4 bits.)

    ## Fig. 6: speedup at iso area, with and without a bandwidth limit

    `sweep_precision` runs the network at every precision on the iso-area array, with the SRAMs
    and the DRAM bandwidth fixed, and the first and last layers kept at 8 bits as in the paper
    (a layer wider than the PEs takes $\\lceil w/b\\rceil\\lceil a/b\\rceil$ passes per MAC).
    Each layer's time is a roofline: $\\max(\\text{compute cycles}, \\text{DRAM bytes}/\\text{bandwidth})$,
    at 1 GHz. The dashed line, *peak*, is the PE-count ratio: the speedup of a perfectly mapped,
    compute-bound network.
    '''),
    code('''
    from integer_engine.accelerator.sweep import format_sweep, sweep_precision

    base = SystolicArray(32, 32, "ws", ifmap_sram_kb=64, filter_sram_kb=64, ofmap_sram_kb=64)
    bandwidths = (None, 64.0, 32.0)
    result = sweep_precision(resnet50, base, bits=bit_widths, bandwidths_gbps=bandwidths,
                             dataflows=("ws", "os"))
    print(format_sweep(result))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    x = np.arange(len(bit_widths))
    for d, (ax, df) in enumerate(zip(axes, result.dataflows)):
        ax.plot(x, result.peak, "k--", label="peak (PE count)")
        for w, gbps in enumerate(bandwidths):
            ax.plot(x, result.speedup[d, :, w], "o-", label="unlimited" if gbps is None else f"{gbps:g} GB/s")
        ax.set_xticks(x, [f"{b}-bit" for b in bit_widths]); ax.set_yscale("log", base=2)
        ax.set_title(f"ResNet-50, {df.upper()} dataflow")
    axes[0].set_ylabel("speedup over 16-bit (iso-area)"); axes[1].legend(); plt.show()
    '''),
    md('''
    What to notice:

    * **Unlimited bandwidth:** the speedup grows with precision but stays below the PE ratio:
      a 119x119 array cannot be kept full by ResNet-50's late layers (7x7 feature maps), and the
      8-bit first and last layers take 4 passes per MAC on 4-bit PEs, 16 on 2-bit PEs.
    * **Bandwidth-limited (64 and 32 GB/s):** the 16-bit baseline is starved for DRAM, and low
      precision removes traffic faster than linearly (previous section). The speedup is then
      *higher* than with unlimited bandwidth, and at 32 GB/s under OS it passes the PE ratio
      itself at 8 and 4 bits: that is the paper's super-linear speedup (the paper: 4.5x at
      64 GB/s for a 4x peak). The `DRAM MB` column shows why: at iso area the traffic falls
      more than the bits alone explain, since the bigger array also needs fewer folds, so
      operands are swept fewer times.

    The exact numbers depend on the area model, the SRAM sizes and the network; the mechanism
    (less data, more of it on chip, fewer stalls) does not.

    ### First and last layers

    The paper keeps the first and last layers at 8 bits and estimates that quantizing them too
    would add another 1.24x. The same sweep with every layer at $b$ bits:
    '''),
    code('''
    all_low = sweep_precision(resnet50, base, bits=bit_widths, bandwidths_gbps=bandwidths,
                              dataflows=("ws",), first_last_bits=None)
    gain = result.cycles[0] / all_low.cycles[0]     # [precision, bandwidth], WS
    for p, bits in enumerate(bit_widths):
        print(f"{bits:>2d}-bit interior: quantizing first/last layers too is "
              + ", ".join(f"{gain[p, w]:.2f}x" for w in range(len(bandwidths)))
              + "  (unlimited, 64 GB/s, 32 GB/s)")
    '''),
    md('''
    At 2 bits the two 8-bit layers cost 15-30 % of the runtime, close to the paper's 1.24x. Whether
    that is worth the accuracy (notebook 4: quantizing the first and last layers to 2 bits costs
    a lot) is the trade-off the paper settles in favour of 8 bits.

    **Try:** `read_topology("resnet20")` (CIFAR-sized, much less work per layer) and watch the
    unlimited-bandwidth speedup flatten; shrink the SRAMs to 16 KB and watch the bandwidth-limited
    curves rise; compare `dataflows=("is",)`. The same model runs from the command line as
    `python -m integer_engine simulate` on SCALE-Sim `.cfg` and topology files.
    '''),
]


NOTEBOOKS: dict[str, list] = {
    "01_autodiff": AUTODIFF,
    "02_convnet": CONVNET,
    "03_pact": PACT_NB,
    "04_quantized_training": QTRAIN,
    "05_integer_inference": INTEGER,
    "06_accelerator": ACCELERATOR,
}


# =============================================================================== building
def build(name: str) -> nbformat.NotebookNode:
    """The notebook `name` from its cells, without outputs."""
    nb = new_notebook(cells=[nbformat.from_dict(cell) for cell in NOTEBOOKS[name]])
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for index, cell in enumerate(nb.cells):
        cell.id = f"{name}-{index}"  # stable ids: a rebuild without changes gives the same file
    return nb


class NotebookFailed(Exception):
    """A notebook cell raised (or timed out); the message names the cell and the error."""


THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def execute(nb: nbformat.NotebookNode, fast: bool, timeout: int = 600,
            single_thread: bool = False) -> nbformat.NotebookNode:
    """Run every cell in a fresh `python3` kernel with cwd = tutorials/; outputs are stored in nb.

    `single_thread` pins Numba and BLAS to one thread: on a machine shared with other jobs,
    multi-threaded kernels that wait on each other's barriers can run 10x slower than one thread.
    Raises NotebookFailed with the cell index and the error if any cell fails.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    env = dict(os.environ)
    env.pop(FAST_FLAG, None)
    if fast:
        env[FAST_FLAG] = "1"
    if single_thread:
        env.update({name: "1" for name in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    current = {"index": -1}

    def on_cell_start(cell, cell_index):
        current["index"] = cell_index

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(HERE)}},
                            on_cell_start=on_cell_start)
    try:
        client.execute(env=env)
    except (CellExecutionError, CellTimeoutError) as error:
        # the error text already holds the cell's source, its output and the traceback
        raise NotebookFailed(f"cell [{current['index']}] failed: {_strip_ansi(str(error))}") \
            from None
    return nb


def _strip_ansi(text: str) -> str:
    import re
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="substrings of notebook names (default: all)")
    parser.add_argument("--execute", action="store_true", help="run the notebooks, store outputs")
    parser.add_argument("--fast", action="store_true", help=f"set {FAST_FLAG}=1 while executing")
    parser.add_argument("--single-thread", action="store_true",
                        help="one Numba/BLAS thread (faster on a busy machine)")
    args = parser.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.names or any(s in n for s in args.names)]
    if not names:
        print(f"error: no notebook matches {args.names}; known: {', '.join(NOTEBOOKS)}",
              file=sys.stderr)
        return 2
    for name in names:
        nb = build(name)
        if args.execute:
            start = time.perf_counter()
            try:
                execute(nb, fast=args.fast, single_thread=args.single_thread)
            except NotebookFailed as error:
                print(f"error: {name}: {error}", file=sys.stderr)
                return 1
            print(f"{name}: executed in {time.perf_counter() - start:.1f} s")
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
