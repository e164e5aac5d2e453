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
# # 2. Convolution, batch-norm, and training a small network
#
# Notebook 1 built the autodiff engine. Here come the two layers every network in the PACT paper
# is made of, and a real training run:
#
# 1. **convolution**: its definition, how tinypact computes it with one matrix product
#    (*im2col*), and its gradient;
# 2. **batch normalization**: training mode versus evaluation mode, running statistics, and its
#    (less obvious) gradient;
# 3. a small conv net trained on the **bundled Fashion-MNIST sample** (5 000 training and 1 000
#    test images shipped inside the package, so this runs offline).
#
# Code: `tinypact/functional/conv.py`, `tinypact/functional/normalization.py`,
# `tinypact/nn/layers.py`, `tinypact/optim/optimizers.py`, `tinypact/data/`.

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

# %%
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


# %% [markdown]
# A `Dataset` keeps the uint8 pixels, `(N, C, H, W)`; a `DataLoader` hands out shuffled batches
# as float32 $x = \text{pixel}/255$ with int64 labels.
#
# ## Convolution
#
# For an input $x$ of shape $(N, C, H, W)$ and weights $w$ of shape $(O, C, K_h, K_w)$, with
# zero padding $p$ and stride $s$ (what deep learning calls convolution is a cross-correlation):
# $$\text{out}[n, o, y, x] = b[o] + \sum_{c,i,j} w[o, c, i, j]\; x_{\text{pad}}[n, c,\, ys + i,\, xs + j],
# \qquad H_{\text{out}} = \left\lfloor \frac{H + 2p - K_h}{s} \right\rfloor + 1 .$$
# Written as loops it is six nested `for`s. `F.conv2d` must agree with them:

# %%
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

# %% [markdown]
# What a filter does is easiest to see with hand-made ones. Two edge detectors (Sobel) and a
# blur, applied to one image with padding 1 (same size out):

# %%
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

# %% [markdown]
# ### im2col: a convolution is one matrix product
#
# Six Python loops are far too slow. Every output pixel is the dot product of one *window*
# (length $K_h K_w C$) with each filter, so stack all windows as the rows of a matrix
# `cols` of shape $(N H_{\text{out}} W_{\text{out}},\; K_h K_w C)$ and the whole layer is
# $$\text{out} = \text{cols}\; W^\top, \qquad W \text{ reshaped to } (O,\; K_h K_w C),$$
# a single BLAS call. NumPy builds `cols` from a strided *view* (no copy until the reshape).
# The backward pass is two more products and a scatter:
# $$\frac{\partial L}{\partial W} = g^\top \text{cols}, \qquad
# \frac{\partial L}{\partial \text{cols}} = g\, W \;\xrightarrow{\text{col2im}}\; \frac{\partial L}{\partial x},$$
# where col2im adds each window's gradient back to the pixels it came from (a pixel sits in up to
# $K_h K_w$ windows, so its gradient is a sum). The same layer lowered by hand:

# %%
from numpy.lib.stride_tricks import sliding_window_view

xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))                          # padding 1, stride 1
windows = sliding_window_view(xp, (3, 3), axis=(2, 3))                    # (N, C, OH, OW, 3, 3)
n, c, oh, ow = windows.shape[:4]
cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * 9)    # one row per window
out = (cols @ w.reshape(4, -1).T + b).reshape(n, oh, ow, 4).transpose(0, 3, 1, 2)
print("cols:", cols.shape, " W:", w.reshape(4, -1).shape, " out:", out.shape)
print("matches F.conv2d:", np.allclose(out, F.conv2d(Tensor(x), Tensor(w), Tensor(b), padding=1).data))

# %% [markdown]
# `F.conv2d` is this computation, with three changes that matter for speed, not for the math
# (tinypact/functional/conv.py): a Numba loop writes the windows from the NHWC layout
# (channels innermost); the batch is cut into blocks of images whose `cols` take about twice
# the CPU's L2 cache, so the product reads them from cache right after they were written (and
# backward rebuilds them block by block instead of keeping them); and the blocks run on one
# thread per core, each calling single-threaded BLAS. `benchmarks/train_step.py` times the SVHN network's step
# against PyTorch's.


# %% [markdown]
# The gradient is checked as in notebook 1: float64, central differences along a random
# direction, the output weighted by a random vector.

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
            return float(np.sum(op(*[Tensor(a + step * v) for a, v in zip(arrays, vs)]).data * r))

    numeric = (f(h) - f(-h)) / (2 * h)
    return abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-12)

print("conv2d, stride 2, padding 1:",
      gradient_check(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), x, w, b))
print("max_pool2d 2x2             :", gradient_check(lambda x: F.max_pool2d(x, 2), x))

# %% [markdown]
# (Max-pooling passes the gradient to the largest value of each window only; random inputs have
# no ties, so the finite difference agrees.)
#
# ## Batch normalization
#
# Deep networks train badly when the scale of each layer's inputs drifts as the layers below
# learn. Batch-norm re-centres and re-scales every channel with the statistics of the current
# batch, then lets the network choose the scale it wants with two learned parameters
# $\gamma_c, \beta_c$ per channel:
# $$\mu_c = \frac{1}{M}\sum x, \quad \sigma_c^2 = \frac{1}{M}\sum (x - \mu_c)^2, \quad
# \hat x = \frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}}, \quad y = \gamma_c\, \hat x + \beta_c,$$
# the sums running over the $M = N H W$ values of channel $c$ in the batch.
#
# At test time there may be a single image, so there is no batch to take statistics from.
# During training each layer keeps **running averages** (buffers: saved in the `state_dict`,
# not learned): $\text{running} \leftarrow (1 - m)\,\text{running} + m\,\text{batch}$ with
# PyTorch's convention $m = 0.1$ (what TensorFlow and tensorpack call "momentum 0.9").
# `model.eval()` switches every batch-norm to normalize with them. This matters for the integer
# engine later: at inference batch-norm is a fixed per-channel affine map, which folds into the
# next quantizer's thresholds.

# %%
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

# %% [markdown]
# The gradient through batch-norm in training mode is not just $\gamma/\sigma$: every output
# depends on every input of its channel through $\mu_c$ and $\sigma_c$. With
# $g = \partial L/\partial y$ and bars for means over the channel's $M$ values:
# $$\frac{\partial L}{\partial x} = \frac{\gamma}{\sqrt{\sigma^2+\epsilon}}
# \left(g - \overline{g} - \hat x\; \overline{g\,\hat x}\right), \qquad
# \frac{\partial L}{\partial \gamma} = \sum g\,\hat x, \qquad \frac{\partial L}{\partial \beta} = \sum g .$$
# The two subtracted terms are what the gradient check would catch if they were missing. In eval
# mode the statistics are constants and $\partial L/\partial x = g\,\gamma/\sqrt{\sigma^2+\epsilon}$.

# %%
xb = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
gamma, beta = rng.standard_normal(3), rng.standard_normal(3)

def bn_train(x, g, b):
    return F.batch_norm(x, np.zeros(3), np.ones(3), g, b, training=True)

def bn_eval(x, g, b):
    return F.batch_norm(x, np.full(3, 0.5), np.full(3, 2.0), g, b, training=False)

print("batch_norm, training mode:", gradient_check(bn_train, xb, gamma, beta))
print("batch_norm, eval mode    :", gradient_check(bn_eval, xb, gamma, beta))


# %% [markdown]
# ## A small network, trained
#
# Two blocks of conv 3x3 → batch-norm → ReLU → max-pool 2x2, then one linear layer:
# 28x28x1 → 14x14x16 → 7x7x32 → 10 classes. The convs in front of a batch-norm have no bias
# (the norm's $\beta$ does that job). Training minimizes the cross-entropy
# $-\frac{1}{N}\sum_i \log \mathrm{softmax}(z_i)_{y_i}$ with Adam; the loop is the usual
# four lines: forward, `zero_grad`, `backward`, `step`.

# %%
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

# %%
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

# %% [markdown]
# Read the confusion matrix: the errors cluster among the upper-body garments (T-shirt,
# pullover, coat and above all **shirt**), which look alike at 28x28, while trousers, bags and
# footwear are nearly always right. (This is a 5 000-image sample; on the full 60 000 images the
# same network does better.)
#
# What did the first layer learn? Its 16 filters of 3x3:

# %%
first = model[0].weight.data[:, 0]
limit = np.abs(first).max()
fig, axes = plt.subplots(1, 16, figsize=(10, 0.9))
for ax, f in zip(axes, first):
    ax.imshow(f, cmap="RdBu", vmin=-limit, vmax=limit); ax.axis("off")
plt.show()

# %% [markdown]
# Next: notebook 3 replaces the ReLU by a *quantized* activation, shows why that alone fails,
# and how PACT's learned clipping level fixes it.
#
# **Try:** train `small_net(batch_norm=False)` with `optim.SGD(..., lr=0.05, momentum=0.9)`
# against the batch-norm version; add a third block; set `padding=0` and work out the new input size of the linear layer from
# $\lfloor (H + 2p - K)/s \rfloor + 1$.
