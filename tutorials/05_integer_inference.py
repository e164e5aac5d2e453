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
# # 5. Integer inference: export, codes and scales, bit-planes and the popcount MAC
#
# Quantization-aware training *simulates* low precision in float32 ("fake quantization"). The
# point of it is to run the network with integers only. This notebook takes a 2-bit network
# trained by tinypact and:
#
# 1. exports it to the integer engine's `.tpq` file (`integer_engine.export`),
# 2. looks at what is inside: weight codes and scales, and the integer thresholds into which
#    batch-norm, the scales and PACT's clip and rounding all fold,
# 3. computes a dot product the way the engine does, with bit-planes, AND and popcount,
# 4. checks that the engine is **bit-exact with the trained model**: every layer's codes and the
#    float32 logits equal what tinypact's own forward computes,
# 5. compares size and speed.
#
# `integer_engine` never imports `tinypact`: the checkpoint file is the only contract
# (`docs/ARCHITECTURE.md`). The same steps run from the command line with
# `python -m integer_engine export RUN -o model.tpq`, then `verify` and `run`; the file format
# and the folding are specified in `docs/model-format.md`.

# %%
import os, sys, pathlib
try:
    import tinypact
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(pathlib.Path.cwd().parent))
SMALL = os.environ.get("TINYPACT_TUTORIAL_FAST", "") not in ("", "0")  # the test suite sets it

import numpy as np
import tinypact.plots  # selects the Agg backend on import: before `%matplotlib inline`
import matplotlib.pyplot as plt
# %matplotlib inline
plt.rcParams.update({"figure.figsize": (6.4, 3.4), "figure.dpi": 72, "axes.grid": True,
                     "grid.alpha": 0.3})
np.set_printoptions(precision=4, suppress=True, linewidth=100)

# %% [markdown]
# ## A 2-bit network to export
#
# PACT activations and SAWB weights at 2 bits, the first and last layers' weights at 8 bits,
# trained on the bundled sample with the project's trainer (notebook 4).

# %%
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

# %% [markdown]
# ## Export: from a checkpoint to integers
#
# The checkpoint holds float32 parameters and the network as a graph (`conv`, `bn`, `act`,
# `maxpool`, ...). Export lowers it to integer layers:
#
# * **weights** become unsigned codes $j \in [0, n_w]$, with $w_q = s_w\,(2j - n_w)$ and one
#   scale per layer (SAWB: $s_w = \alpha_w / n_w$): the same codes the training quantizer used,
#   recomputed in float64 from the checkpoint;
# * **activations** are codes $q \in [0, n]$ with value $q\,\alpha/n$ (PACT) or
#   $\text{pixel}/255$ (the input image);
# * a conv accumulates an **integer** $\text{acc} = \sum q \cdot (2j - n_w)$. tinypact's own
#   forward computes exactly this (a float GEMM on integers is exact below $2^{24}$) and then
#   applies the scale once, after all MACs, as the paper's hardware does (Sec. 4.2). Everything
#   after the MACs is a fixed sequence of float32 operations per output channel $c$, the
#   **float epilogue** (`docs/model-format.md`): $z = \text{acc}\cdot s$, $+\,b_c$ (conv bias),
#   $\times\,g_c$, $+\,h_c$ (batch norm), then PACT: clip to $[0, \alpha]$, $\times\, n$,
#   $/\,\alpha$, round half up. Each step is monotone, so the code is a staircase in the
#   accumulator: the number of **thresholds** $T_{c,1} \le \dots \le T_{c,n}$ the accumulator
#   reaches (FINN's *MultiThreshold*). Export finds each threshold by **exact search**: a
#   bisection over the integers that evaluates the very same float32 sequence at every probe,
#   never an algebraic inverse, so the thresholds agree with tinypact's float32 arithmetic on
#   every possible accumulator. The engine stores $n$ integers per channel and compares; no
#   float, no multiplier, no rounding at run time.
# * A max-pool between batch-norm and the activation moves after the requantization (the
#   requantizer is monotone, so $\max$ commutes with it) and runs on codes.

# %%
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

# %% [markdown]
# Notice: `conv0` (the first layer) reads 8-bit pixels with 8-bit weights and writes 2-bit codes
# (its output *is* the first PACT activation); `conv1` and `conv2` are 2-bit x 2-bit; the global
# average pool becomes a sum of 49 codes (its $1/49$ folds into the next layer's scale); `fc`
# ends in the float epilogue's affine part: float32 logits, equal bit for bit to tinypact's.
#
# ### Codes and scales, checked against tinypact
#
# The weight codes of `conv1` reproduce tinypact's quantized weights exactly, and the thresholds
# of one channel turn accumulators into codes:

# %%
from tinypact.quant import sawb_weight_codes

conv1 = integer_model.layer("conv1")
j, n_w, s_w = conv1.arrays["weight"].astype(np.int64), conv1.attrs["n_w"], conv1.attrs["w_scale"]
tp_codes, tp_scale = sawb_weight_codes(model.conv1.weight.data, 2)
w_q_engine = (2 * j - n_w).astype(np.float32) * np.float32(s_w)   # one float32 scale per layer
print("weight codes equal tinypact's:", np.array_equal(j, tp_codes),
      f"  s_w * n_w = {s_w * n_w:.6f}, tinypact's SAWB alpha_w = {tp_scale:.6f}")
print("levels used:", np.unique(w_q_engine).round(4), " (2-bit SAWB: -a, -a/3, a/3, a)")
print("tinypact's quantized weights equal s_w (2j - n_w), bit for bit:",
      np.array_equal(model.conv1.quantized_weight_array(), w_q_engine))

c = 0
T, d = conv1.arrays["thresholds"][c], conv1.arrays["direction"][c]
print(f"channel {c}: thresholds {T.tolist()}, direction {int(d):+d}")
for acc in (T[0] - 1, T[0], T[1], T[2] - 1, T[2]):
    print(f"   accumulator {int(acc):6d} -> code {int(np.sum(d * acc >= d * T))}")

# %% [markdown]
# Every output channel has its own staircase: batch-norm's scale and shift, the weight scale and
# alpha differ per channel, and a negative batch-norm scale turns the staircase around
# (direction $-1$: larger accumulators give *smaller* codes). The plot draws the staircases of a
# few channels of `conv1` over the range of accumulator values they actually see on 200 test
# images (the shaded histogram: channel 0's accumulators):

# %%
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

# %% [markdown]
# ## Bit-planes and the popcount MAC
#
# How does a machine multiply 2-bit numbers fast? Write each code in binary,
# $a = \sum_i 2^i a_i$ and $j = \sum_k 2^k j_k$, and store each bit position of a whole row
# as a bit-vector (a **bit-plane**, 64 elements per `uint64` word). A dot product of two rows
# becomes
# $$a \cdot j = \sum_{i, k} 2^{i + k}\; \mathrm{popcount}(a_i \,\&\, j_k),$$
# so one 64-bit AND + POPCNT does 64 one-bit multiply-accumulates, and a $2 \times 2$-bit dot
# product costs 4 of them per 64 elements. The weights' odd levels $2j - n_w$ need one more
# term: $a \cdot (2j - n_w) = 2\,(a \cdot j) - n_w \sum a$.
#
# By hand on a small example, then with the engine's kernel:

# %%
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

# %% [markdown]
# ## The bit-exact check
#
# "Bit-exact" means the engine (bit-planes, popcounts, thresholds) produces **the same codes in
# every layer, and the same float32 logits, as the network tinypact trained**, for every image.
# `verify_against_checkpoint` runs tinypact's own eval forward on the checkpoint and compares each
# engine layer with the graph node it stands for (no tolerance: equal or not). This is what
# `python -m integer_engine verify MODEL` and the end of `python -m tinypact.train` do.

# %%
from integer_engine.verify import verify_against_checkpoint

images = test_set.images[:200 if SMALL else 1000]          # uint8 pixels: the engine's input
labels = test_set.labels[:len(images)]
report = verify_against_checkpoint(integer_model, result.run_dir, images)
for name, bad in report.mismatches.items():
    node = integer_model.layer(name).attrs["graph_node"]
    print(f"{name:8s} vs tinypact's {node:8s}: {bad} of {report.elements[name]:,} values differ")
assert report.ok
print("predictions equal to tinypact's:", np.mean(report.engine_predictions == report.other_predictions))

# %% [markdown]
# Why this holds by construction: tinypact multiplies integers too and then runs the documented
# float32 epilogue; export computes the same constants with the same operations in the same
# order; and the thresholds come from searching that float32 sequence. A float64 "ideal"
# formula instead of the float32 one would part ways with the trained model near rounding
# boundaries (an earlier version of this project did, on up to 0.3% of the predictions).
#
# A second check needs no tinypact at all: a plain NumPy **reference** (`integer_engine.reference`)
# computes every layer the obvious way (an einsum on the codes, then the epilogue evaluated
# directly, no bit-planes, no thresholds). It is what localises a kernel bug, and it works on any
# `.tpq` file:

# %%
from integer_engine.executor import run_model
from integer_engine.reference import run_reference

engine_out = run_model(integer_model, images, collect=True)
reference = run_reference(integer_model, images)
for name, out in engine_out.outputs.items():
    print(f"{name:8s} {str(out.shape):18s} identical to the reference: {np.array_equal(out, reference[name])}")
assert all(np.array_equal(out, reference[k]) for k, out in engine_out.outputs.items())
with no_grad():
    logits_float = model(Tensor(images.astype(np.float32) / np.float32(255))).data
print(f"logits equal to tinypact's, bit for bit: {np.array_equal(logits_float, engine_out.logits)}")
print(f"test error: tinypact {np.mean(logits_float.argmax(1) != labels):.1%}, "
      f"integer engine {np.mean(engine_out.predictions != labels):.1%}")

# %% [markdown]
# ## To ONNX Runtime and FINN, and a Brevitas model in
#
# The integer model is a contract other engines can be held to. `integer_engine export-onnx`
# writes it as standard ONNX (ConvInteger/MatMulInteger for the MACs, the thresholds as
# comparisons, the float32 epilogue one node per operation), which ONNX Runtime runs with every
# layer equal to the engine's; `--qonnx` writes FINN's input (integer weights marked with their
# bit widths, MultiThreshold nodes holding the same integer thresholds). This section needs the
# optional extra: `pip install -e '.[onnx]'` (`docs/interop.md`).

# %%
try:
    import onnxruntime  # noqa: F401
    HAVE_ONNX = True
except ImportError:
    HAVE_ONNX = False
    print("skipped: pip install -e '.[onnx]' (onnx, onnxruntime, qonnx) to run this section")

if HAVE_ONNX:
    from integer_engine.interop.check import compare_with_engine
    from integer_engine.interop.to_onnx import to_onnx
    from integer_engine.interop.to_qonnx import to_qonnx

    some = images[:64 if SMALL else 256]
    for name, graph in (("ONNX Runtime", to_onnx(integer_model)), ("qonnx (FINN's input)", to_qonnx(integer_model))):
        check = compare_with_engine(integer_model, graph, some)
        print(f"{name:22s}: {check.total_mismatches} mismatching values in {len(check.mismatches)} layers "
              f"on {len(some)} images")

# %% [markdown]
# In FINN, `ModelWrapper(path).transform(ConvertQONNXtoFINN()).transform(Streamline())`
# continues from the QONNX file. FINN charges one extra bit for the odd weight levels
# $2j - n_w$ of DoReFa and SAWB (2-bit weights become INT3, the 8-bit first and last layers
# INT9).
#
# The other way round, a Brevitas model exported with `export_qonnx` becomes a `.tpq` whose
# thresholds are found by exact search over Brevitas's own arithmetic (its half-to-even `ROUND`
# or `HALF_UP`), run by qonnx's executor; the accelerator model can then price it:
#
# ```bash
# python -m integer_engine import tests/fixtures/brevitas/cnv_w4a4.onnx -o brevitas.tpq
# python -m integer_engine verify-onnx brevitas.tpq tests/fixtures/brevitas/cnv_w4a4.onnx --data sample
# python -m integer_engine simulate brevitas.tpq --array 16x16
# ```
#
# The Brevitas input quantizer must be unsigned (`QuantIdentity(act_quant=Uint8ActPerTensorFloat)`):
# the integer model's input is uint8 pixels, and a signed one is refused.

# %% [markdown]
# ## Size and speed
#
# The `.tpq` file stores one byte per weight code (simple, not bit-packed on disk) and the
# thresholds; the float checkpoint stores float32 weights plus the optimizer state. In memory
# the engine packs the 2-bit weights into bit-planes: 2 bits per weight.

# %%
import os
checkpoint_bytes = os.path.getsize(result.run_dir / "checkpoint.npz")
tpq_bytes = os.path.getsize(RUNS / "w2a2.tpq")
float_weight_bytes = sum(p.size * 4 for p in model.parameters())
packed_bytes = sum(layer.arrays["weight"].size * layer.attrs["wbits"] / 8 for layer in integer_model.compute_layers)
print(f"checkpoint.npz (float32 + optimizer state): {checkpoint_bytes / 1024:7.1f} KiB")
print(f"float32 parameters alone:                  {float_weight_bytes / 1024:7.1f} KiB")
print(f"model.tpq (codes as uint8, thresholds):    {tpq_bytes / 1024:7.1f} KiB")
print(f"weight codes bit-packed at their widths:   {packed_bytes / 1024:7.1f} KiB")


# %% [markdown]
# Speed, measured here side by side on the same images (after a warm-up run, since Numba
# compiles the kernels on first use). These are *this machine, now* figures: the ratios are the
# information, and the repository's benchmark scripts (`benchmarks/`) are where speed claims are
# made.

# %%
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
      f" tinypact float32 fake-quant {t_float * 1e3:7.1f} ms, NumPy reference {t_reference * 1e3:7.1f} ms")

stats = run_model(integer_model, batch).stats
print(f"{'layer':8s} {'method':10s} {'MACs':>12s} {'ms':>8s}")
for s in stats:
    print(f"{s.name:8s} {s.method:10s} {s.macs:>12,d} {s.seconds * 1e3:>8.2f}")

# %% [markdown]
# Which kernel a layer gets depends on the CPU (the method column above). Where popcounts are
# cheap (AVX-512 with VPOPCNTDQ: Zen 4, Zen 5, recent Xeons) the 2x2-bit layers run as popcount
# GEMMs (`bitserial`): one 64-bit AND+POPCNT does 16 two-bit MACs. On an AVX2-only CPU (Zen 1,
# say) only 1x1-bit layers do; the 2x2-bit layers run the integer dot product there, as the 8-bit
# first and last layers always do: `int8` (u8 codes x s8 levels -> int32 with `vpdpbusd` where the
# CPU has AVX-512 VNNI, else AVX2's `vpmaddubsw` + `vpmaddwd`) or `int` (the engine hands them to
# BLAS in float32: exact, because every partial sum is an integer below $2^{24}$, the layer's
# accumulator bound known at export). On a network this small, per-layer overheads (im2col,
# packing, pooling) weigh as much as the MACs (see `benchmarks/bitgemm.py` for measured GMAC/s).
#
# Next: notebook 6 asks the same question for custom hardware: what does 2-bit arithmetic buy on
# a systolic-array accelerator?
#
# **Try:** export a DoReFa network (`weight_quant="dorefa"`) and compare its weight scale with
# SAWB's; `python -m integer_engine inspect` on the `.tpq` file; train at 4 bits and watch the
# engine switch the 4x4-bit layers from popcounts to an integer dot-product kernel (the method
# column above; where it switches depends on the CPU: `python -m integer_engine run` prints it per layer).
