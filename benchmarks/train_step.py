"""One training step of the SVHN network (Adam, 40x40x3) or ResNet20 (SGD, 3x32x32), batch 128:
float, or the QAT step.

Prints the CPU and the threads, ms/step, images/s, achieved GFLOP/s and its fraction of
np.matmul's GFLOP/s measured in the same run, and the peak memory NumPy allocated during one
step. With --vs-torch (PyTorch installed) the same network and step run in PyTorch, interleaved
step by step with tinypact's, and the ratio of the medians is printed. With --bits K the step is
quantization-aware training of tinypact's own `svhn` network (K-bit weights and activations,
8-bit first/last layers; --act-quant pact|dorefa|relu) and the PyTorch peer is the same graph
with the same quantizers written as straight-through autograd ops; tinypact's float step is
timed in the same rounds and the QAT / float ratio printed. --profile breaks tinypact's
step down by layer and by op (forward and backward) and the rest (loss, optimizer); --threads
N sets the BLAS and Numba threads (1 or 2 here) before anything starts. With --ops, each image op (conv2d,
max_pool2d, batch_norm; forward and backward) is timed against PyTorch's on the SVHN shapes.

--model resnet20 times the papers' CIFAR-10 ResNet20 (tinypact's `resnet20`: option-A shortcuts)
with SGD momentum 0.9 and weight decay; its PyTorch peer is the same graph in plain torch modules
with tinypact's initial weights (benchmarks/brevitas_parity.py's mirror), and with --bits K
(PACT activations, SAWB weights at 2 bits, DoReFa otherwise) the QAT step is compared with
tinypact's float step. --torch-first imports PyTorch before tinypact, as a notebook comparing the
two would: tinypact's thread settings must hold in either order.

    python benchmarks/train_step.py [--steps 5] [--batch 128] [--vs-torch] [--ops]
    python benchmarks/train_step.py --model resnet20 --vs-torch [--torch-first] [--bits 2]
    python benchmarks/train_step.py --bits 2 --vs-torch --threads 2
    python benchmarks/train_step.py --bits 2 --profile --threads 1
    python benchmarks/train_step.py --vs-torch --avx2     # AVX2 code paths only, all frameworks
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def _threads_from_argv(argv: list[str]) -> None:
    """--threads N must act before NumPy, Numba and PyTorch start their thread pools."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else (
            argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else None)
        if value is not None and value.isdigit():
            for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                         "NUMBA_NUM_THREADS"):
                os.environ[name] = value


# --avx2: every framework in this process runs its AVX2 code (no AVX-512) on this CPU, to see
# what an AVX2-only machine (Zen 1, Haswell) gets from each. A stand-in, not a measurement of
# such a machine: the cores, caches and clock stay this one's.
AVX2_ENVIRONMENT = {
    "NUMBA_CPU_NAME": "haswell",  # Numba (tinypact's kernels) compiles for Haswell: AVX2 + FMA
    "NUMBA_CACHE_DIR": str(Path(tempfile.gettempdir()) / "tinypact-numba-avx2"),
    "OPENBLAS_CORETYPE": "Haswell",  # NumPy's OpenBLAS: its AVX2 kernels
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # PyTorch's oneDNN convolutions
}


def _avx2_from_argv(argv: list[str]) -> None:
    if "--avx2" in argv:
        os.environ.update(AVX2_ENVIRONMENT)


_threads_from_argv(sys.argv[1:])
_avx2_from_argv(sys.argv[1:])
if "--torch-first" in sys.argv[1:]:
    try:
        import torch  # noqa: F401  (before tinypact and NumPy: its OpenMP and BLAS load first)
    except ImportError:
        sys.exit("error: --torch-first needs PyTorch (pip install torch); it is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# tinypact shortens OpenBLAS's idle spin and keeps Numba's threads from spinning, whichever was
# imported first (tinypact/runtime.py); the spin would take the cores from the next kernel.
import tinypact  # noqa: E402,I001
import numpy as np  # noqa: E402

from tinypact import functional as F  # noqa: E402
from tinypact import nn, optim  # noqa: E402

# (in, out, kernel, padding, bias, batch norm, max-pool after) per conv; then fc 512 -> 10.
SVHN_CONVS = [(3, 48, 5, 0, True, False, True), (48, 64, 3, 1, False, True, False),
              (64, 64, 3, 1, False, True, True), (64, 128, 3, 0, False, True, False),
              (128, 128, 3, 1, False, True, False), (128, 128, 3, 0, False, True, False),
              (128, 512, 5, 0, False, True, False)]
BN_EPS, BN_MOMENTUM = 1e-4, 0.1  # tensorpack's momentum 0.9 in PyTorch's convention


def svhn_tinypact() -> nn.Sequential:
    layers = []
    for index, (cin, cout, k, pad, bias, bn, pool) in enumerate(SVHN_CONVS):
        if index == len(SVHN_CONVS) - 1:
            layers.append(nn.Dropout(0.5))
        layers.append(nn.Conv2d(cin, cout, k, padding=pad, bias=bias))
        if bn:
            layers.append(nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM))
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.ReLU())
    layers += [nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


def svhn_torch(torch, reference: nn.Sequential):
    """The same layers in PyTorch, with the tinypact network's initial weights copied in."""
    tnn = torch.nn
    layers = []
    for module in reference:
        if isinstance(module, nn.Conv2d):
            layers.append(tnn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                                     padding=module.padding, bias=module.bias is not None))
        elif isinstance(module, nn.BatchNorm2d):
            layers.append(tnn.BatchNorm2d(module.num_features, eps=BN_EPS, momentum=BN_MOMENTUM))
        elif isinstance(module, nn.MaxPool2d):
            layers.append(tnn.MaxPool2d(2))
        elif isinstance(module, nn.ReLU):
            layers.append(tnn.ReLU())
        elif isinstance(module, nn.Dropout):
            layers.append(tnn.Dropout(module.p))
        elif isinstance(module, nn.Flatten):
            layers.append(tnn.Flatten())
        elif isinstance(module, nn.Linear):
            layers.append(tnn.Linear(512, 10))
    net = tnn.Sequential(*layers)
    with torch.no_grad():
        for (_, ours), theirs in zip(reference.named_parameters(), net.parameters()):
            theirs.copy_(torch.from_numpy(ours.data))
    return net


def layer_macs(model: str = "svhn") -> list[tuple[int, bool]]:
    """(MACs per image, first layer?) of each conv and linear layer of the network."""
    layers = []
    if model == "svhn":
        h = 40
        for index, (cin, cout, k, pad, _bias, _bn, pool) in enumerate(SVHN_CONVS):
            h = h + 2 * pad - k + 1
            layers.append((h * h * cout * cin * k * k, index == 0))
            h = h // 2 if pool else h
        layers.append((512 * 10, False))
    else:  # resnet20: stem 3->16 at 32x32, then 3 stages of 3 blocks of two 3x3 convs, fc 64->10
        layers.append((32 * 32 * 16 * 3 * 9, True))
        for stage, (width, size) in enumerate(((16, 32), (32, 16), (64, 8))):
            cin = 16 if stage == 0 else width // 2
            for block in range(3):
                layers.append((size * size * width * (cin if block == 0 else width) * 9, False))
                layers.append((size * size * width * width * 9, False))
        layers.append((64 * 10, False))
    return layers


def train_flops(batch: int, model: str = "svhn") -> float:
    """FLOPs of one step: forward 2*MACs; backward 2*MACs for dW and 2*MACs for dX (none for
    the first conv, whose input needs no gradient). Elementwise work is not counted."""
    return sum(2 * batch * macs * (2 if first else 3) for macs, first in layer_macs(model))


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def page_faults(step) -> int:
    """Minor page faults of one step: memory the kernel had to hand (and zero) anew."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


INPUT_SIZE = {"svhn": 40, "resnet20": 32}


def make_batch(batch: int, seed: int = 0, size: int = 40):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, 3, size, size)).astype(np.float32) / 256
    labels = rng.integers(0, 10, size=batch)
    return images, labels


def tinypact_step_fn(net, batch: int, model: str = "svhn"):
    """tinypact's step on `net` (SVHN: Adam; ResNet20: SGD momentum 0.9, weight decay 2e-4, as
    its recipe), PACT alphas projected after it as the trainer does (a no-op for a float
    network)."""
    from tinypact.quant import clamp_alphas

    if model == "svhn":
        opt = optim.Adam(net.parameters(), lr=1e-3, eps=1e-5, weight_decay=1e-7)
    else:
        opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    images, labels = make_batch(batch, size=INPUT_SIZE[model])

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(net(tinypact.Tensor(images)), labels)
        loss.backward()
        opt.step()
        clamp_alphas(net)
        return loss.item()

    return step


def torch_step_fn(torch, net, batch: int, model: str = "svhn"):
    """PyTorch's step on `net` (a torch module): the same optimizer and batch as tinypact's."""
    if model == "svhn":
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-5, weight_decay=1e-7)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    images, labels = make_batch(batch, size=INPUT_SIZE[model])
    x, y = torch.from_numpy(images), torch.from_numpy(labels)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def time_steps(step, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = [_timed(step) for _ in range(steps)]
    return float(np.median(times))


def time_interleaved(steps: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each step function, run in turn (a, b, a, b, ...) so that both see the
    same machine load."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(_timed(step))
    return {name: float(np.median(t)) for name, t in times.items()}


# ------------------------------------------------------------------ the quantization-aware step
def qat_tinypact(bits: int, act_quant: str, model: str = "svhn"):
    """tinypact's own `svhn` or `resnet20` network at `bits` (8-bit first/last layers; ResNet20:
    SAWB weights at 2 bits, DoReFa otherwise, 8-bit shortcuts)."""
    from tinypact.models import build_model
    from tinypact.quant import Policy

    weight_quant = "sawb" if model == "resnet20" and bits == 2 else "dorefa"
    return build_model(model, Policy(wbits=bits, abits=bits, act_quant=act_quant,
                                     weight_quant=weight_quant))


def resnet20_tinypact():
    """tinypact's `resnet20` in float (ReLU, float shortcuts and first/last layers)."""
    from tinypact.models import build_model
    from tinypact.quant import Policy

    return build_model("resnet20", Policy(wbits=32, abits=32, first_last_bits=32,
                                          act_quant="relu", shortcut_bits=32))


def resnet20_torch(reference):
    """The float ResNet20 in plain torch modules with `reference`'s (tinypact's float resnet20)
    initial weights: benchmarks/brevitas_parity.py's mirror."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from brevitas_parity import Quantizers, ResNet20, copy_initial_weights

    net = ResNet20(Quantizers(32, 32, 32, 1.0), reference.in_channels, reference.stem_padding)
    copy_initial_weights(net, reference)
    return net


def torch_mirror(torch, net):
    """The network of tinypact's `net.graph()` in PyTorch, with tinypact's initial parameters and
    the same quantizers as straight-through autograd ops (the usual fake-quant formulation):

        round_ste(v) = v + (round(v) - v).detach()
        PACT:   y = where(x < alpha, relu(x), alpha);  y_q = round_ste(y * n / alpha) * alpha / n
        DoReFa weights k > 1: t = tanh(w);  w_q = 2 round_ste((t / (2 max|t|) + 1/2) n) / n - 1
        DoReFa weights k = 1: w_q = (sign(w) * E|w|) through the identity
    """
    tnn = torch.nn
    state = {k: torch.from_numpy(v.copy()) for k, v in net.state_dict().items()}

    def round_ste(v):
        return v + (torch.floor(v + 0.5) - v).detach()

    def weight_q(w, wq):
        if wq["kind"] == "float" or wq["bits"] == 32:
            return w
        n = 2 ** wq["bits"] - 1
        if wq["bits"] == 1:
            e = w.abs().mean().detach()
            return w + (torch.where(w >= 0, e, -e) - w).detach()
        t = torch.tanh(w)
        return 2 * round_ste((t / (2 * t.abs().max()) + 0.5) * n) / n - 1

    class Node(tnn.Module):
        def __init__(self, node):
            super().__init__()
            self.node, op = node, node["op"]
            if op in ("conv", "linear"):
                self.weight = tnn.Parameter(state[node["weight"]])
                self.bias = None if node["bias"] is None else tnn.Parameter(state[node["bias"]])
            elif op == "bn":
                p = node["prefix"]
                self.bn = tnn.BatchNorm2d(state[f"{p}.weight"].shape[0], eps=node["eps"], momentum=0.1)
                with torch.no_grad():
                    self.bn.weight.copy_(state[f"{p}.weight"])
                    self.bn.bias.copy_(state[f"{p}.bias"])
            elif op == "act" and node["kind"] == "pact":
                self.alpha = tnn.Parameter(state[node["alpha"]].reshape(()))

        def forward(self, x):
            node, op = self.node, self.node["op"]
            if op == "conv":
                return tnn.functional.conv2d(x, weight_q(self.weight, node["wq"]), self.bias,
                                             node["stride"], node["padding"])
            if op == "linear":
                return tnn.functional.linear(x, weight_q(self.weight, node["wq"]), self.bias)
            if op == "bn":
                return self.bn(x)
            if op == "maxpool":
                return tnn.functional.max_pool2d(x, node["kernel"], node["stride"], node["padding"])
            if op == "flatten":
                return x.flatten(1)
            if op == "act":
                if node["kind"] == "float":
                    return torch.relu(x)
                n = 2 ** node["bits"] - 1
                if node["kind"] == "pact":
                    y = torch.where(x < self.alpha, torch.relu(x), self.alpha)
                    return round_ste(y * n / self.alpha) * self.alpha / n
                top = 1.0 if node["kind"] == "dorefa" else float(state[node["alpha"]])
                return round_ste(torch.clamp(x, 0, top) * n / top) * top / n
            raise ValueError(f"no PyTorch mirror for graph op {op!r}")

    # The graph omits dropout (the identity at inference), so the mirror trains without it:
    # slightly less work for PyTorch than tinypact's step, which has one dropout layer.
    return tnn.Sequential(*[Node(node) for node in net.graph()[1:]])


# ------------------------------------------------------------------------------- the profile
def profile_step(net, step, rounds: int = 3) -> None:
    """Where one tinypact step spends its time, layer by layer: each top-level module's forward
    (timed around it) and the backward of every op it recorded (each op's closure, timed), then
    the rest (loss, optimizer, graph bookkeeping)."""
    from tinypact.tensor import Tensor

    forward: dict[str, float] = {}
    backward: dict[tuple[str, str], float] = {}
    op_forward: dict[str, float] = {}  # time since the previous op was recorded, by op
    current = ["(outside the layers)"]
    last = [time.perf_counter()]
    original_from_op = Tensor.from_op.__func__

    def timed_from_op(cls, data, parents, back, op=""):
        now = time.perf_counter()
        op_forward[op or "other"] = op_forward.get(op or "other", 0.0) + now - last[0]
        last[0] = now

        def timed_back(g, _back=back, _key=(current[0], op or "other")):
            start = time.perf_counter()
            out = _back(g)
            backward[_key] = backward.get(_key, 0.0) + time.perf_counter() - start
            return out
        return original_from_op(cls, data, parents, timed_back, op)

    modules = [(name, m) for name, m in net.named_modules() if name and "." not in name]
    originals = {}
    for name, module in modules:
        originals[name] = module.forward

        def wrapped(*args, _name=f"{name} {type(module).__name__}", _forward=module.forward):
            current[0] = _name
            start = last[0] = time.perf_counter()
            out = _forward(*args)
            forward[_name] = forward.get(_name, 0.0) + time.perf_counter() - start
            current[0] = "(outside the layers)"
            return out
        module.forward = wrapped
    Tensor.from_op = classmethod(timed_from_op)
    try:
        step()
        forward.clear(), backward.clear(), op_forward.clear()
        total = sum(_timed(step) for _ in range(rounds)) / rounds
    finally:
        Tensor.from_op = classmethod(original_from_op)
        for name, module in modules:
            module.forward = originals[name]
    per_layer: dict[str, float] = {}
    for (layer, _), seconds in backward.items():
        per_layer[layer] = per_layer.get(layer, 0.0) + seconds
    f_total, b_total = sum(forward.values()) / rounds, sum(backward.values()) / rounds
    print(f"profile of one step ({rounds} averaged): {1e3 * total:.0f} ms = forward "
          f"{1e3 * f_total:.0f} + backward {1e3 * b_total:.0f} + loss/optimizer/other "
          f"{1e3 * (total - f_total - b_total):.0f}")
    print(f"  {'layer':24s} {'forward ms':>10s} {'backward ms':>12s} {'% of step':>10s}")
    for layer in list(forward) + [k for k in per_layer if k not in forward]:
        f, b = forward.get(layer, 0.0) / rounds, per_layer.get(layer, 0.0) / rounds
        print(f"  {layer:24s} {1e3 * f:10.1f} {1e3 * b:12.1f} {100 * (f + b) / total:10.1f}")
    # By op, over the whole step: an op's forward is the time since the op recorded before it
    # (its own work plus the Python between the two), its backward its closure's time.
    per_op: dict[str, float] = {}
    for (_, op), seconds in backward.items():
        per_op[op] = per_op.get(op, 0.0) + seconds
    ops = sorted(set(op_forward) | set(per_op), key=lambda o: -(op_forward.get(o, 0.0) + per_op.get(o, 0.0)))
    print(f"  {'op (whole step)':24s} {'forward ms':>10s} {'backward ms':>12s} {'% of step':>10s}")
    for op in ops:
        f, b = op_forward.get(op, 0.0) / rounds, per_op.get(op, 0.0) / rounds
        print(f"  {op:24s} {1e3 * f:10.1f} {1e3 * b:12.1f} {100 * (f + b) / total:10.1f}")


def machine_line(torch=None) -> str:
    """The CPU (LLVM's name for it and its widest vector features) and the threads in use."""
    import numba

    from tinypact import _threads
    from llvmlite import binding as llvm

    features = llvm.get_host_cpu_features()
    wide = [f for f in ("avx512f", "avx512vnni", "avx512vpopcntdq", "avx2") if features.get(f)]
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    line = (f"CPU {model} ({llvm.get_host_cpu_name()}; {', '.join(wide) or 'no AVX2'}), "
            f"{os.cpu_count()} cores; threads: Numba {numba.get_num_threads()}, "
            f"OpenBLAS {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, "
            f"conv2d blocks {_threads.workers()}")
    if torch is not None:
        line += f", PyTorch {torch.get_num_threads()}"
    avx2 = os.environ.get("NUMBA_CPU_NAME") == AVX2_ENVIRONMENT["NUMBA_CPU_NAME"]
    if avx2:
        line += "\n--avx2: " + ", ".join(f"{k}={v}" for k, v in AVX2_ENVIRONMENT.items()
                                         if k != "NUMBA_CACHE_DIR")
    line += f"\nNumPy's BLAS: OpenBLAS, {openblas_kernels()} kernels"
    forced = {name: os.environ[name] for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
              if name in os.environ}
    if forced and not avx2:
        line += (" (chosen by " + ", ".join(f"{k}={v}" for k, v in forced.items()) + " in the "
                 "environment, not by this CPU; unset to measure what this CPU gives NumPy)")
    return line


def openblas_kernels() -> str:
    """The CPU kernels NumPy's OpenBLAS runs (its own name for them, e.g. Haswell, SkylakeX)."""
    import ctypes

    from tinypact._threads import openblas_function

    corename = openblas_function("get_corename")
    if corename is None:
        return "unknown"
    corename.restype = ctypes.c_char_p
    return corename().decode()


def op_table(torch, batch: int, repeats: int = 5) -> None:
    """Forward and backward time of each image op, tinypact vs PyTorch, on the SVHN shapes."""
    rng = np.random.default_rng(0)
    tF = torch.nn.functional
    cases = [("conv0 3->48 5x5 @40", (batch, 3, 40, 40), lambda: (48, 3, 5, 5), 0),
             ("conv1 48->64 3x3 @18", (batch, 48, 18, 18), lambda: (64, 48, 3, 3), 1),
             ("conv2 64->64 3x3 @18", (batch, 64, 18, 18), lambda: (64, 64, 3, 3), 1),
             ("conv3 64->128 3x3 @9", (batch, 64, 9, 9), lambda: (128, 64, 3, 3), 0),
             ("conv4 128->128 3x3 @7", (batch, 128, 7, 7), lambda: (128, 128, 3, 3), 1),
             ("conv6 128->512 5x5 @5", (batch, 128, 5, 5), lambda: (512, 128, 5, 5), 0)]
    print(f"{'op':28s} {'tinypact fwd+bwd ms':>20s} {'torch ms':>10s} {'ratio':>7s}")

    def run_pair(name, ours, theirs):
        t_ours = min(_timed(ours) for _ in range(repeats))
        t_theirs = min(_timed(theirs) for _ in range(repeats))
        print(f"{name:28s} {1e3 * t_ours:20.1f} {1e3 * t_theirs:10.1f} {t_ours / t_theirs:7.2f}")

    for name, xshape, wshape, pad in cases:
        x = rng.standard_normal(xshape, dtype=np.float32)
        w = rng.standard_normal(wshape(), dtype=np.float32)
        first = name.startswith("conv0")  # the image needs no gradient
        xt, wt = tinypact.Tensor(x, requires_grad=not first), tinypact.Tensor(w, requires_grad=True)
        xq, wq = torch.tensor(x, requires_grad=not first), torch.tensor(w, requires_grad=True)
        # tinypact activations arrive NHWC-backed from the previous conv; mimic that layout.
        xt.data = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

        def ours():
            out = F.conv2d(xt, wt, None, 1, pad)
            out.backward(np.ones_like(out.data))

        def theirs():
            out = tF.conv2d(xq, wq, None, 1, pad)
            out.backward(torch.ones_like(out))

        run_pair(name, ours, theirs)
    for name, shape in [("max_pool2d 2x2 @36x48", (batch, 48, 36, 36)),
                        ("max_pool2d 2x2 @18x64", (batch, 64, 18, 18))]:
        x = rng.standard_normal(shape, dtype=np.float32)
        xt = tinypact.Tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
                             requires_grad=True)
        xq = torch.tensor(x, requires_grad=True)

        def ours():
            out = F.max_pool2d(xt, 2)
            out.backward(np.ones_like(out.data))

        def theirs():
            out = tF.max_pool2d(xq, 2)
            out.backward(torch.ones_like(out))

        run_pair(name, ours, theirs)
    for name, shape in [("batch_norm @18x64", (batch, 64, 18, 18)),
                        ("batch_norm @7x128", (batch, 128, 7, 7))]:
        x = rng.standard_normal(shape, dtype=np.float32)
        c = shape[1]
        xt = tinypact.Tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
                             requires_grad=True)
        gamma, beta = (tinypact.Tensor(np.ones(c, np.float32), requires_grad=True),
                       tinypact.Tensor(np.zeros(c, np.float32), requires_grad=True))
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        xq = torch.tensor(x, requires_grad=True)
        gq, bq = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
        rmq, rvq = torch.zeros(c), torch.ones(c)

        def ours():
            out = F.batch_norm(xt, rm, rv, gamma, beta, True, 0.1, 1e-4)
            out.backward(np.ones_like(out.data))

        def theirs():
            out = tF.batch_norm(xq, rmq, rvq, gq, bq, True, 0.1, 1e-4)
            out.backward(torch.ones_like(out))

        run_pair(name, ours, theirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("svhn", "resnet20"), default="svhn",
                        help="the network (default svhn)")
    parser.add_argument("--torch-first", action="store_true",
                        help="import PyTorch before tinypact (read before anything is imported)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median is reported)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--vs-torch", action="store_true", help="also time PyTorch, interleaved")
    parser.add_argument("--ops", action="store_true", help="time each image op against PyTorch")
    parser.add_argument("--bits", type=int, default=32,
                        help="QAT: weight and activation bits of tinypact's network "
                             "(8-bit first/last layers); 32 (default): the float step")
    parser.add_argument("--act-quant", default="pact", choices=("pact", "dorefa", "relu"),
                        help="activation quantizer with --bits (default pact)")
    parser.add_argument("--profile", action="store_true",
                        help="break tinypact's step down by layer (forward, backward) and the rest")
    parser.add_argument("--threads", type=int, help="BLAS/Numba/PyTorch threads (set before start)")
    parser.add_argument("--avx2", action="store_true",
                        help="run NumPy's OpenBLAS, tinypact's Numba kernels and PyTorch with their "
                             "AVX2 code only (no AVX-512): a stand-in for an AVX2-only CPU")
    args = parser.parse_args(argv)
    if args.ops and args.model != "svhn":
        print("error: --ops times the SVHN shapes only; drop --model", file=sys.stderr)
        return 2
    torch = None
    if args.vs_torch or args.ops:
        try:
            import torch
        except ImportError:
            print("error: --vs-torch/--ops need PyTorch (pip install torch); it is not installed",
                  file=sys.stderr)
            return 2
        if args.threads:
            torch.set_num_threads(args.threads)
    print(machine_line(torch) + ("\nPyTorch was imported before tinypact" if args.torch_first else ""))
    if args.ops:
        op_table(torch, args.batch)
        return 0

    float_net = svhn_tinypact if args.model == "svhn" else resnet20_tinypact
    tinypact.manual_seed(0)
    if args.bits == 32:
        net, what = float_net(), "float"
    else:
        net = qat_tinypact(args.bits, args.act_quant, args.model)
        what = f"QAT W{args.bits}A{args.bits} {args.act_quant} (8-bit first/last)"
    step = tinypact_step_fn(net, args.batch, args.model)
    step()  # compile the Numba kernels before measuring memory
    tracemalloc.start()
    step()
    peak_mib = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    if args.profile:
        profile_step(net, step)
        return 0

    matmul = matmul_gflops()
    steps = {"tinypact": step}
    float_reference = net
    if args.bits != 32:  # the QAT step's cost over the float step, timed in the same rounds
        tinypact.manual_seed(0)
        float_reference = float_net()
        steps["tinypact float"] = tinypact_step_fn(float_reference, args.batch, args.model)
    peer = "float"
    if torch is not None:
        torch.manual_seed(0)
        if args.model == "resnet20":  # the float network: its PyTorch peer has no QAT mirror
            mirror = resnet20_torch(float_reference)
        else:
            mirror = svhn_torch(torch, net) if args.bits == 32 else torch_mirror(torch, net)
            peer = what
        steps["torch"] = torch_step_fn(torch, mirror, args.batch, args.model)
    seconds = time_interleaved(steps, args.steps)
    flops = train_flops(args.batch, args.model)
    label = "SVHN" if args.model == "svhn" else "ResNet20"
    print(f"tinypact  {label} {what} train step, batch {args.batch}: {1e3 * seconds['tinypact']:.0f} "
          f"ms/step, {args.batch / seconds['tinypact']:.0f} images/s")
    print(f"          {flops / 1e9:.1f} GFLOP/step -> {flops / seconds['tinypact'] / 1e9:.1f} GFLOP/s = "
          f"{flops / seconds['tinypact'] / 1e9 / matmul:.0%} of np.matmul's {matmul:.1f} GFLOP/s "
          f"(2048^3 float32, this run)")
    print(f"          peak NumPy memory during one step: {peak_mib:.0f} MiB (tracemalloc); "
          f"{page_faults(step)} page faults per step")
    if "tinypact float" in seconds:
        print(f"          the float step, interleaved: {1e3 * seconds['tinypact float']:.0f} ms; "
              f"ratio QAT / float step time: {seconds['tinypact'] / seconds['tinypact float']:.2f}x")
    if torch is not None:
        print(f"PyTorch {torch.__version__} ({peer} step): {1e3 * seconds['torch']:.0f} ms/step, "
              f"{args.batch / seconds['torch']:.0f} images/s (medians of {args.steps} interleaved steps)")
        ours = "tinypact float" if peer == "float" and "tinypact float" in seconds else "tinypact"
        print(f"ratio tinypact / PyTorch {peer} step time: {seconds[ours] / seconds['torch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
