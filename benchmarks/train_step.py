"""One Adam training step of the SVHN network (float layout), batch 128, 40x40x3 input.

Prints ms/step, images/s, achieved GFLOP/s and its fraction of np.matmul's GFLOP/s measured in
the same run, and the peak memory NumPy allocated during one step. With --vs-torch (PyTorch
installed) the same network and step run in PyTorch, side by side, and the ratio is printed.
With --ops, each image op (conv2d, max_pool2d, batch_norm; forward and backward) is timed
against PyTorch's on the SVHN shapes.

    python benchmarks/train_step.py [--steps 5] [--batch 128] [--vs-torch] [--ops]
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# tinypact first: importing it before NumPy shortens OpenBLAS's idle spin (tinypact/__init__.py),
# which would otherwise take the cores from the Numba kernel after each BLAS call.
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


def train_flops(batch: int, size: int = 40) -> float:
    """FLOPs of one step: forward 2*MACs; backward 2*MACs for dW and 2*MACs for dX (none for
    the first conv, whose input needs no gradient). Elementwise work is not counted."""
    flops, h = 0.0, size
    for index, (cin, cout, k, pad, _bias, _bn, pool) in enumerate(SVHN_CONVS):
        h = h + 2 * pad - k + 1
        macs = batch * h * h * cout * cin * k * k
        flops += 2 * macs * (2 if index == 0 else 3)
        h = h // 2 if pool else h
    return flops + 2 * batch * 512 * 10 * 3


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_batch(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, 3, 40, 40)).astype(np.float32) / 256
    labels = rng.integers(0, 10, size=batch)
    return images, labels


def tinypact_step_fn(batch: int):
    tinypact.manual_seed(0)
    net = svhn_tinypact()
    opt = optim.Adam(net.parameters(), lr=1e-3, eps=1e-5, weight_decay=1e-7)
    images, labels = make_batch(batch)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(net(tinypact.Tensor(images)), labels)
        loss.backward()
        opt.step()
        return loss.item()

    return net, step


def torch_step_fn(torch, net_ref, batch: int):
    net = svhn_torch(torch, net_ref)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-5, weight_decay=1e-7)
    images, labels = make_batch(batch)
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
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median is reported)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--vs-torch", action="store_true", help="also time PyTorch, side by side")
    parser.add_argument("--ops", action="store_true", help="time each image op against PyTorch")
    args = parser.parse_args(argv)
    torch = None
    if args.vs_torch or args.ops:
        try:
            import torch
        except ImportError:
            print("error: --vs-torch/--ops need PyTorch (pip install torch); it is not installed",
                  file=sys.stderr)
            return 2
    if args.ops:
        op_table(torch, args.batch)
        return 0

    net, step = tinypact_step_fn(args.batch)
    step()  # compile the Numba kernels before measuring memory
    tracemalloc.start()
    step()
    peak_mib = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()

    matmul = matmul_gflops()
    seconds = time_steps(step, args.steps)
    flops = train_flops(args.batch)
    print(f"tinypact  SVHN train step, batch {args.batch}: {1e3 * seconds:.0f} ms/step, "
          f"{args.batch / seconds:.0f} images/s")
    print(f"          {flops / 1e9:.1f} GFLOP/step -> {flops / seconds / 1e9:.1f} GFLOP/s = "
          f"{flops / seconds / 1e9 / matmul:.0%} of np.matmul's {matmul:.1f} GFLOP/s "
          f"(2048^3 float32, this run)")
    print(f"          peak NumPy memory during one step: {peak_mib:.0f} MiB (tracemalloc)")
    if torch is not None:
        torch.manual_seed(0)
        torch_step = torch_step_fn(torch, net, args.batch)
        torch_seconds = time_steps(torch_step, args.steps)
        print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads): "
              f"{1e3 * torch_seconds:.0f} ms/step, {args.batch / torch_seconds:.0f} images/s")
        print(f"ratio tinypact / PyTorch step time: {seconds / torch_seconds:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
