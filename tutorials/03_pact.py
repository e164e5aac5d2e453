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
# # 3. Why quantizing ReLU fails, and PACT
#
# To run a network with $k$-bit activations, every activation must take one of $2^k$ values.
# For weights that is easy (they are bounded and fixed after training). Activations are the
# hard part, and the PACT paper's starting point (its Fig. 1) is that the obvious approach,
# quantizing the ReLU's output, trains badly at low precision, while *clipping* the activation
# helps quantization but hurts full-precision accuracy. PACT makes the clipping level a
# parameter $\alpha$ that the network learns.
#
# This notebook:
# 1. shows what goes wrong when an unbounded ReLU is quantized,
# 2. writes PACT's Eq. 1-3 and checks tinypact's gradients against them,
# 3. measures the trade-off between clipping error and quantization error,
# 4. reproduces Fig. 1 at small scale (training and test error of ReLU vs clipping, quantized
#    or not) and watches $\alpha$ learn,
# 5. reproduces Fig. 3 at small scale (cross-entropy versus $\alpha$, one layer at a time).
#
# Code: `tinypact/quant/functional.py` (the quantizers as autodiff ops) and
# `tinypact/quant/layers.py` (`ActQuant`, `PACT`).

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
# ## Quantizing a ReLU: which range?
#
# A $k$-bit unsigned quantizer over a range $[0, a]$ has $n = 2^k - 1$ steps of size $a/n$:
# $$y_q = \mathrm{round}\!\left(\frac{y\, n}{a}\right) \frac{a}{n}, \qquad y = \mathrm{clip}(x, 0, a),$$
# with tinypact's one rounding rule, round half up: $\mathrm{round}(v) = \lfloor v + 1/2 \rfloor$
# (`tinypact.quant.round_half_up`; the integer engine uses the same rule, so its integer codes
# match training exactly).
#
# A ReLU has no upper bound, so $a$ has to come from the data: say a running average of the
# largest activation, as TensorFlow's fake-quant does (`ActQuant("relu", bits)` in tinypact).
# After batch-norm, pre-activations are roughly standard normal, and the largest of a large
# batch sits between 4 and 5. At 2 bits the levels are then about $\{0, 1.6, 3.2, 4.7\}$ and
# almost every positive value lands on 0 or 1.6. A smaller range resolves the bulk of the distribution, at the
# price of *clipping* the rare large values:

# %%
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

# %% [markdown]
# With $a$ = the maximum, 2-bit quantization throws away most of the information carried by the
# positive activations; with $a = 1.5$ the error is several times smaller even though every value
# above 1.5 is cut. The right range depends on the layer, the precision and the stage of
# training, which is why PACT *learns* it.
#
# ## PACT: a learned clipping level
#
# PACT replaces ReLU by a clipped activation with one learnable scalar $\alpha$ per layer, and
# quantizes it (paper Eq. 1 and 2):
# $$y = \mathrm{PACT}(x) = 0.5\,\big(|x| - |x - \alpha| + \alpha\big) =
# \begin{cases} 0 & x < 0 \\ x & 0 \le x < \alpha \\ \alpha & x \ge \alpha \end{cases}
# \qquad\qquad
# y_q = \mathrm{round}\!\left(y\, \frac{2^k - 1}{\alpha}\right) \frac{\alpha}{2^k - 1}.$$
# The rounding has zero gradient almost everywhere, so PACT uses the **straight-through
# estimator** (STE): $\partial y_q / \partial y = 1$. Then (Eq. 3)
# $$\frac{\partial y_q}{\partial x} = \begin{cases} 1 & 0 \le x < \alpha \\ 0 & \text{otherwise} \end{cases}
# \qquad\qquad
# \frac{\partial y_q}{\partial \alpha} = \begin{cases} 1 & x \ge \alpha \\ 0 & \text{otherwise.} \end{cases}$$
# So $\alpha$'s gradient is the sum of the upstream gradients of the clipped elements: if the
# loss would like the clipped outputs to be larger, $\alpha$ grows. An L2 penalty
# $\lambda_\alpha \alpha^2$ pulls it down; the two settle where clipping stops paying.

# %%
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

# %% [markdown]
# The same rule with a random upstream gradient $g$, as the project's tests check it:
# $\partial L/\partial x = g \cdot [0 \le x < \alpha]$ and
# $\partial L/\partial \alpha = \sum g \cdot [x \ge \alpha]$.

# %%
x = Tensor(rng.normal(1.0, 1.5, 1000), requires_grad=True)
a = Tensor(np.float64(1.7), requires_grad=True)
g = rng.standard_normal(1000)
pact(x, a, bits=3).backward(g)
inside, above = (x.data >= 0) & (x.data < 1.7), x.data >= 1.7
print("dL/dx     matches g * [0 <= x < alpha]:", np.array_equal(x.grad, g * inside))
print("dL/dalpha =", a.grad, "  sum of g where x >= alpha =", g[above].sum())

# %% [markdown]
# ## Clipping error versus quantization error
#
# For a given distribution of $x$, the mean squared difference between $y_q$ and the ReLU output
# has two parts: the **clipping error** of the values above $\alpha$ (grows as $\alpha$ shrinks)
# and the **quantization error** inside $[0, \alpha]$, about $\frac{1}{12}(\alpha/n)^2$ per value
# (grows with $\alpha$). Their sum has a minimum that moves to larger $\alpha$ as the bits
# increase, and without quantization only the clipping error is left, which just keeps falling:

# %%
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

# %% [markdown]
# Minimizing this error is *not* what PACT does: it minimizes the training loss, and a network
# may prefer to clip more (or less) than the least-squares choice. But the picture explains the
# behaviour we will see: at 2 bits the useful $\alpha$ is small, at full precision anything
# large enough is fine.
#
# ## Fig. 1 at small scale: ReLU versus clipping, quantized or not
#
# The paper's Fig. 1 trains CIFAR10-ResNet20 with four activation functions. We train tinypact's
# Fashion-MNIST network (3 conv + BN + activation layers, 1.9 M MACs per image; `tinypact.models`)
# on the bundled sample with full-precision weights everywhere, so only the activations differ:
#
# | activation | `Policy(act_quant=..., abits=...)` |
# |---|---|
# | ReLU, full precision | `relu`, 32 |
# | ReLU, 2-bit, range = running max | `relu`, 2 |
# | clip to [0, 1], full precision | `dorefa`, 32 (DoReFa's activation: a fixed clipping level) |
# | clip to [0, 1], 2-bit | `dorefa`, 2 |
# | PACT, 2-bit (learned alpha) | `pact`, 2 |
# | PACT, full precision (learned alpha) | `pact`, 32 (used for Fig. 3 below) |
#
# Training is Adam with cosine learning-rate decay. PACT's $\alpha$ starts at 10 (the paper's
# choice) and has its own parameter group with L2 decay $\lambda_\alpha$. Because Adam moves
# every parameter by about the learning rate per step whatever the size of its gradient, a
# scalar $\alpha$ needs a larger learning rate than the weights to travel from 10 to its
# useful range within a few epochs (with SGD, as in the paper's CIFAR recipe, the summed
# gradient is large and this is not needed).

# %%
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


# %%
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

# %%
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

# %% [markdown]
# Solid lines: 2-bit activations; dashed: full precision. The two effects the paper's Fig. 1
# separates can be read off as differences of final test errors:

# %%
final = {name: 100 * h["test"][-1] for name, (_, h) in runs.items()}
relu_q = final["ReLU, 2-bit"] - final["ReLU, full precision"]
clip_q = final["clip [0,1], 2-bit"] - final["clip [0,1], full prec."]
pact_q = final["PACT, 2-bit"] - final["PACT, full precision"]
print(f"cost of quantizing to 2 bits: ReLU {relu_q:+.1f} points, fixed clip {clip_q:+.1f}, PACT {pact_q:+.1f}")
print(f"cost of the fixed clip at 1 in full precision (vs ReLU): "
      f"{final['clip [0,1], full prec.'] - final['ReLU, full precision']:+.1f} points")
print("best 2-bit activation:", min((v, k) for k, v in final.items() if "2-bit" in k)[1])

# %% [markdown]
# What to look for (the paper's observations; check them against the numbers above):
#
# * **Quantizing the ReLU costs accuracy**: its range follows the largest activations, so the
#   four levels are too coarse for the bulk of them.
# * **A fixed clip makes quantization nearly free** (a small range leaves a small quantization
#   error), **but the clip itself costs accuracy** in full precision: a clipping level that was
#   not chosen for the layer throws information away.
# * **PACT gets both**: its full-precision version matches ReLU (a learned clip is harmless), and
#   its 2-bit version is the best of the 2-bit activations.
#
# These are single runs on a 5 000-image sample for a few epochs, not the paper's 200-epoch
# CIFAR10-ResNet20 runs: a difference of a point or two between two lines is within the noise
# of a different seed.
#
# ### Watching $\alpha$ learn
#
# Each PACT layer's $\alpha$ over the training steps. It starts at 10, far above almost every
# activation, where the L2 decay and the few values that reach it are the only forces on it; it
# falls within a few dozen steps and settles at a level of its own for each layer, where the
# pull of the clipped values' gradients balances the decay.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
for ax, name in zip(axes, ("PACT, 2-bit", "PACT, full precision")):
    trace = runs[name][1]["alphas"]
    for layer in trace[0]:
        ax.plot([step[layer] for step in trace], label=layer)
    ax.set_title(name); ax.set_xlabel("training step"); ax.set_yscale("log")
axes[0].set_ylabel("alpha"); axes[0].legend(); plt.show()
for name in ("PACT, 2-bit", "PACT, full precision"):
    print(f"{name:22s} final alphas:", {k: round(v, 2) for k, v in alphas(runs[name][0]).items()})

# %% [markdown]
# ## Fig. 3 at small scale: cross-entropy versus $\alpha$, layer by layer
#
# The paper's Fig. 3 takes a trained network and sweeps one layer's $\alpha$ while every other
# layer stays as trained, recording the training loss. In full precision the loss falls as
# $\alpha$ grows and then stays flat (clipping only hurts when it cuts useful values); with
# 2-bit activations each layer has a clear minimum, because a large $\alpha$ wastes the few
# levels. We repeat it with the two PACT networks trained above, on 1 000 training images
# (eval mode: batch-norm uses its running statistics).

# %%
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

# %% [markdown]
# Dotted lines mark the $\alpha$ each layer learned. Left (full precision): the loss only rises
# when $\alpha$ becomes small enough to clip what the layer needs; beyond that, any $\alpha$ is
# as good. Right (2 bits): the curves are U-shaped, and the learned $\alpha$ sits near the bottom
# of each U, which is what PACT's gradient is designed to find; the best level differs from
# layer to layer, which is why $\alpha$ is per layer.
#
# Next: notebook 4 quantizes the weights too (DoReFa and SAWB), at 2, 3 and 4 bits, and looks at
# the first and last layers.
#
# **Try:** `alpha_decay` (the paper's $\lambda_\alpha$) of 0 and of 0.05; `Policy(abits=3)`;
# `act_quant="pact+"` (IBM's later variant that also gives $\alpha$ a gradient from the
# rounding error inside $[0, \alpha)$).
