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
# # 6. The accelerator: folds, cycles and memory traffic, and why low precision is super-linear
#
# Section 6 of the PACT paper asks what quantization buys in hardware. Its answer (Fig. 6): on
# an accelerator of fixed area, memory and DRAM bandwidth, going from 16-bit to 4-bit MACs gives
# more than the 4x the extra PEs promise when bandwidth is the limit, because at low precision
# more of each layer's data fits on chip and DRAM transfers disappear: a **super-linear** speedup.
#
# This notebook builds that argument with tinypact's analytic model of a systolic array
# (`integer_engine.accelerator`), whose compute part reproduces SCALE-Sim cycle for cycle and
# whose memory part counts every operand at its bit width:
#
# 1. a convolution is a matrix product; how it is cut into *folds* on an `R x C` array,
# 2. cycles, mapping efficiency and the three dataflows (OS, WS, IS),
# 3. why a bigger array is not proportionally faster,
# 4. memory: SRAM capacity in elements grows as bits shrink, DRAM traffic falls faster than bits,
# 5. iso-area scaling and the paper's Fig. 6, with first and last layers at 8 bits.

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
# ## A convolution is a matrix product
#
# A conv layer with an `H x W x C` input, `K` filters of `R_f x S_f x C` and stride `s` computes,
# for each of its $N_{px} = E_h E_w$ output pixels and each filter, a dot product over the
# window $W = R_f S_f C$. That is the GEMM $(N_{px} \times W)\,(W \times K)$ with
# $N_{px}\,W\,K$ multiply-accumulates (MACs). SCALE-Sim describes a layer by exactly these
# numbers (a *topology* CSV row); tinypact ships the topologies of the networks it trains.
# The output size uses SCALE-Sim's no-padding rule $E = \lceil (H - R_f + s)/s \rceil$, so a
# padded layer is given by its padded input size (SVHN's `conv1` is 18x18 padded to 20x20).

# %%
from integer_engine.accelerator.systolic import Layer, SystolicArray, simulate_layer, simulate_network
from integer_engine.accelerator.scalesim import read_topology

svhn = read_topology("svhn")           # the paper's SVHN network, 7 conv + 1 FC
print(f"{'layer':6s} {'input':>10s} {'filter':>8s} {'K':>4s} {'Npx':>5s} {'W':>5s} {'MACs':>11s}")
for l in svhn:
    print(f"{l.name:6s} {l.ifmap_h:>3d}x{l.ifmap_w:<3d}x{l.channels:<3d} {l.filter_h}x{l.filter_w:<6d}"
          f"{l.num_filters:>4d} {l.ofmap_pixels:>5d} {l.window:>5d} {l.macs:>11,d}")
print(f"total: {sum(l.macs for l in svhn):,d} MACs per image")

# %% [markdown]
# ## Folds: cutting the GEMM to the array's size
#
# A systolic array is a grid of `R x C` processing elements (PEs), each doing one MAC per cycle
# and passing operands to its neighbours. A *dataflow* decides which operand stays put in the PEs
# and which two GEMM dimensions are spread over the grid (spatially) while the third streams
# through (temporally):
#
# | dataflow | stays in the PE | rows $S_r$ | columns $S_c$ | streamed $T$ |
# |---|---|---|---|---|
# | OS (output stationary) | partial sums | $N_{px}$ | $K$ | $W$ |
# | WS (weight stationary) | weights | $W$ | $K$ | $N_{px}$ |
# | IS (input stationary) | inputs | $W$ | $N_{px}$ | $K$ |
#
# The $S_r \times S_c$ spatial matrix rarely matches the array: it is cut into
# $\lceil S_r/R\rceil \cdot \lceil S_c/C\rceil$ **folds**, run one after the other. Each fold
# costs the stream length plus the time to fill and drain the array:
# $$\text{cycles per fold} = T + R + C - 2 \;(\text{OS}), \qquad T + 2R + C - 2 \;(\text{WS, IS: } +R \text{ to preload the stationary tile}),$$
# $$\text{compute cycles} = \text{folds} \cdot \text{cycles per fold} - 1 .$$
# The last fold in each direction is usually partly empty; the **mapping efficiency**
# $S_r S_c / (\text{folds}\cdot R C)$ is the fraction of PEs that hold real work.
# Here is SVHN's first layer, `conv0`, under WS on a 32x32 array:

# %%
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

# %% [markdown]
# Each outlined square is one fold. The last row of folds holds only $75 - 64 = 11$ of its 32
# rows and the last column $48 - 32 = 16$ of 32, so 41 % of the PE-cycles are wasted. The stream,
# on the other hand, is long ($T = 1296$ pixels), so the $2R + C - 2 = 94$ cycles each fold
# spends filling and draining the array hardly matter. Late layers are the opposite case.
#
# ### Checking against SCALE-Sim
#
# SCALE-Sim's own regression output for AlexNet's first layer (224x224x3 input, 96 filters of
# 11x11, stride 4) on a 32x32 WS array is 112 283 cycles, mapping efficiency 94.53 %, overall
# utilization 91.68 %. The model gives:

# %%
alexnet_conv1 = Layer("conv1", 224, 224, 11, 11, 3, 96, stride=4)
r = simulate_layer(alexnet_conv1, SystolicArray(32, 32, "ws"))
print(f"folds {r.folds}, cycles {r.compute_cycles}, mapping efficiency {r.mapping_efficiency:.5%}, "
      f"overall utilization {r.overall_util:.3%}")
assert (r.compute_cycles, round(r.mapping_efficiency * 100, 5)) == (112283, 94.53125)

# %% [markdown]
# ## The three dataflows on a whole network
#
# The same network costs very different numbers of cycles depending on which GEMM dimension
# streams. A layer with few output pixels (the late SVHN layers: 7x7, 5x5, 1x1) has a short
# WS stream, so WS spends most of its time filling the array; OS streams over the window $W$,
# which is long exactly there.

# %%
dataflows = ("os", "ws", "is")
cycles = {df: [r.total_cycles for r in simulate_network(svhn, SystolicArray(32, 32, df)).layers]
          for df in dataflows}
x = np.arange(len(svhn))
fig, ax = plt.subplots(figsize=(8, 3.2))
for i, df in enumerate(dataflows):
    ax.bar(x + (i - 1) * 0.27, cycles[df], 0.27, label=f"{df.upper()}: {sum(cycles[df]):,} cycles")
ax.set_xticks(x, [l.name for l in svhn]); ax.set_ylabel("cycles (32x32 array)")
ax.set_title("SVHN network, one image"); ax.legend(); plt.show()

# %% [markdown]
# Notice `conv6` (5x5x128 -> 512 filters on a 5x5 input, a single output pixel): under WS it has
# $S_r = W = 3200$, $S_c = 512$, i.e. 100 x 16 = 1600 folds, each streaming a single pixel.
#
# ## A bigger array is not proportionally faster
#
# Quantization's promise is more PEs in the same silicon. But each layer's spatial matrix is
# finite: as the array grows, more of it sits idle in the partial last folds and the fill/drain
# overhead $R + C$ grows while the stream $T$ does not. Utilization = MACs / (cycles x PEs):

# %%
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

# %% [markdown]
# The small SVHN network (42 M MACs on tiny feature maps) stops speeding up long before the PE
# count stops growing; ResNet-50 (224x224 images, 4 G MACs) keeps the array busy much longer.
# Keep this in mind when reading the iso-area results below: the extra PEs of a 2-bit array
# only help a network with enough parallel work.
#
# ## Memory: precision changes what fits on chip
#
# SCALE-Sim stores every element in one byte. tinypact's model counts each operand at its bit
# width: an SRAM of $S$ KB, double-buffered (half computes, half prefetches), keeps
# $S \cdot 1024 \cdot 8 / 2 / b$ elements of $b$ bits. Each operand's DRAM traffic follows the
# fold loop: an operand the outer loop sweeps $n$ times costs
# $$X + (n-1)\max(0,\, X - B)$$
# bytes ($X$ its size, $B$ the live half of its SRAM): what fits is fetched once, the rest
# again on every sweep. Partial sums that outgrow the output SRAM go to DRAM and come back.
# So halving the bits does *at least* halve the traffic, and more than halve it once a
# re-fetched operand starts to fit. Same 32x32 WS array, ResNet-50, all layers at $b$ bits:

# %%
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

# %% [markdown]
# Going from 16 to 4 bits shrinks every element 4x. The weights, read once under WS, fall
# exactly 4x; the input traffic falls about 6.6x: at 4 bits whole feature maps fit in the 32 KB
# live half of the input SRAM and stop being re-fetched for every column fold. The output side
# falls less than 4x: it is dominated by spilled partial sums, which stay wide
# ($w + a + \lceil\log_2 W\rceil$ bits). On the same array, the total is about linear in the
# bits; the super-linear part comes once the array grows too (below).
#
# ### Strided layers fetch only what their windows touch
#
# A 1x1 stride-2 downsample reads every other row and column of its input, a quarter of its
# pixels. The model, like SCALE-Sim, fetches exactly the touched ones: per side,
# $\text{touched}(n, f, s) = (E-1)\min(f, s) + \text{clip}(n - (E-1)s, 0, f)$ with
# $E = \lceil (n-f)/s\rceil + 1$.

# %%
from integer_engine.accelerator.systolic import touched_extent

downsample = next(l for l in resnet50 if l.name == "layer2.0.downsample")
whole = downsample.ifmap_h * downsample.ifmap_w * downsample.channels
print(f"{downsample.name}: {downsample.ifmap_h}x{downsample.ifmap_w}x{downsample.channels} input, "
      f"1x1 filter, stride {downsample.stride}")
print(f"rows touched: {int(touched_extent(downsample.ifmap_h, 1, 2))} of {downsample.ifmap_h}; "
      f"elements fetched {downsample.ifmap_touched:,} of {whole:,} ({whole / downsample.ifmap_touched:.2f}x less)")

# %% [markdown]
# ## Iso-area: how many PEs fit
#
# The paper compares accelerators of the *same area*. A $w \times a$-bit MAC needs a
# multiplier that grows as $w \cdot a$, plus an adder and registers that grow linearly; the
# model (`integer_engine.accelerator.area`) is
# $$\text{area}(w, a) = w a + \alpha\,\frac{w + a}{2}, \qquad \alpha = 50/3,$$
# with $\alpha$ calibrated to the paper's statement that a 2-bit MAC is about 14x denser than a
# 16-bit one. The array keeps its square shape, both sides scaled by $\sqrt{\text{density}}$.

# %%
from integer_engine.accelerator.area import density, iso_area_array, mac_area

for bits in bit_widths:
    rows, cols = iso_area_array(32, 32, bits)
    print(f"{bits:>2d}-bit MAC: area {mac_area(bits):7.1f}, density {density(bits):5.2f}x "
          f"-> {rows}x{cols} array ({rows * cols:,} PEs)")

# %% [markdown]
# (The paper also quotes "4x peak FLOPs" from 16 to 4 bits; no smooth area model gives both that
# and 14x at 2 bits, so this one is calibrated to the density and has a 6.3x peak at 4 bits.)
#
# ## Fig. 6: speedup at iso area, with and without a bandwidth limit
#
# `sweep_precision` runs the network at every precision on the iso-area array, with the SRAMs
# and the DRAM bandwidth fixed, and the first and last layers kept at 8 bits as in the paper
# (a layer wider than the PEs takes $\lceil w/b\rceil\lceil a/b\rceil$ passes per MAC).
# Each layer's time is a roofline: $\max(\text{compute cycles}, \text{DRAM bytes}/\text{bandwidth})$,
# at 1 GHz. The dashed line, *peak*, is the PE-count ratio: the speedup of a perfectly mapped,
# compute-bound network.

# %%
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

# %% [markdown]
# What to notice:
#
# * **Unlimited bandwidth:** the speedup grows with precision but stays below the PE ratio:
#   a 119x119 array cannot be kept full by ResNet-50's late layers (7x7 feature maps), and the
#   8-bit first and last layers take 4 passes per MAC on 4-bit PEs, 16 on 2-bit PEs.
# * **Bandwidth-limited (64 and 32 GB/s):** the 16-bit baseline is starved for DRAM, and low
#   precision removes traffic faster than linearly (previous section). The speedup is then
#   *higher* than with unlimited bandwidth, and at 32 GB/s under OS it passes the PE ratio
#   itself at 8 bits (3.0x against 2.64x) and reaches 6.2x at 4 bits, well above the 4x bit
#   ratio: that is the paper's super-linear speedup (the paper: 4.5x at
#   64 GB/s for a 4x peak). The `DRAM MB` column shows why: at iso area the traffic falls
#   more than the bits alone explain, since the bigger array also needs fewer folds, so
#   operands are swept fewer times.
#
# The exact numbers depend on the area model, the SRAM sizes and the network; the mechanism
# (less data, more of it on chip, fewer stalls) does not.
#
# ### First and last layers
#
# The paper keeps the first and last layers at 8 bits and estimates that quantizing them too
# would add another 1.24x. The same sweep with every layer at $b$ bits:

# %%
from integer_engine.accelerator.sweep import PAPER_FIRST_LAST_GAIN, first_last_gain

dataflows3 = ("os", "ws", "is")
lowered, gain = first_last_gain(resnet50, base, bit_widths, bandwidths, dataflows=dataflows3,
                                first_last_bits=2)
w64 = bandwidths.index(64.0)
print(f"64 GB/s, first/last layers at the interior bits instead of 8 (paper: {PAPER_FIRST_LAST_GAIN}x):")
for d, df in enumerate(dataflows3):
    print(f"  {df.upper()}: " + ", ".join(f"{b}-bit {gain[d, p, w64]:.2f}x"
                                     for p, b in enumerate(bit_widths) if b < 8))

# %% [markdown]
# At 2 bits and 64 GB/s, quantizing the first and last layers too gives 1.23x under WS, 1.35x
# under IS and 1.60x under OS, against the paper's estimated 1.24x; at 4 bits only 1.02-1.12x,
# because a 4-bit PE needs 4 passes for an 8-bit layer and a 2-bit PE 16. OS gains most because
# it is compute-bound there. Whether that is worth the accuracy (notebook 4: quantizing the
# first and last layers to 2 bits costs a lot) is the trade-off the paper settles in favour of
# 8 bits.
#
# **Try:** `read_topology("resnet20")` (CIFAR-sized, much less work per layer) and watch the
# unlimited-bandwidth speedup flatten; shrink the SRAMs to 16 KB and watch the bandwidth-limited
# curves rise; compare `dataflows=("is",)`. The same model runs from the command line as
# `python -m integer_engine simulate` on SCALE-Sim `.cfg` and topology files.
