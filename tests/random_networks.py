"""Random small tinypact networks for the exactness tests and `scripts/soak_exact.py`.

`random_network(rng, ties=...)` builds a real tinypact `Network` (its modules, its forward, its
graph) from a few random stages: conv [+ BN] [+ max-pool before or after the activation], ResNet
basic blocks (residual adds, strided option-A shortcuts, in_act requantizers), average pools,
linear layers, then 8-bit logits; every weight quantizer at its supported bits, PACT / DoReFa /
quantized-ReLU activations at 1-8 bits, batch norms with negative, tiny and zero gammas and tiny
variances. With `ties=True` the constants are binary fractions (alphas n * 2**k, 1-bit weights
of one power-of-two magnitude, batch norms that scale by +-1 exactly, quarter-unit shifts), so
that many pre-activations land exactly on rounding ties.
"""
from __future__ import annotations

import numpy as np

from tinypact.models import BasicBlock, Network, _GraphBuilder
from tinypact.nn import AvgPool2d, BatchNorm2d, Flatten, MaxPool2d, Module
from tinypact.quant import ActQuant, Policy, QConv2d, QLinear
from tinypact.tensor import Tensor

WEIGHT_BITS = {"dorefa": (1, 2, 3, 4, 5, 6, 7, 8), "sawb": (1, 2, 3, 4, 5, 8), "sawb0": (2, 4, 8)}
ACT_KINDS = ("pact", "dorefa", "relu")


class RandomNet(Network):
    """A chain of stages (modules, or BasicBlocks with their own graph), forward and graph()
    walking the same list."""

    name = "random"

    def __init__(self, policy: Policy, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__(policy, num_classes, in_channels=input_shape[0], image_size=input_shape[1])
        self.input_shape = input_shape
        self.stages: list[str] = []

    def add(self, name: str, module: Module) -> None:
        setattr(self, name, module)
        self.stages.append(name)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_quant(x)
        for name in self.stages:
            x = getattr(self, name)(x)
        return x

    def graph(self) -> list[dict]:
        builder = _GraphBuilder(self.input_shape)
        for name in self.stages:
            module = getattr(self, name)
            if isinstance(module, BasicBlock):
                module.add_to_graph(builder, name)
            else:
                builder.layer(name, module)
        return builder.nodes


def _act(rng, bits: int, ties: bool) -> ActQuant:
    return _set_range(rng, ActQuant(str(rng.choice(ACT_KINDS)), bits), ties)


def _set_range(rng, act: ActQuant, ties: bool) -> ActQuant:
    """A random clip level (PACT's alpha, the quantized ReLU's running max; DoReFa's is 1)."""
    n = 2**act.bits - 1
    alpha = n * 2.0 ** int(rng.integers(-4, 1)) if ties else float(rng.uniform(0.3, 3.0))
    if act.kind == "pact":
        act.alpha.data = np.array(alpha, np.float32)
    elif act.kind == "relu":
        act.running_max = np.float32(alpha)
    return act


def _weights(rng, module, ties: bool) -> None:
    w = module.weight.data
    if ties:  # 1-bit DoReFa weights of one magnitude: the scale E = mean|w| is a power of two
        w[...] = np.where(rng.random(w.shape) < 0.5, -1, 1) * 2.0 ** int(rng.integers(-2, 2))
    else:
        w[...] = rng.normal(0, 1, w.shape) * rng.choice([0.05, 0.3, 1.0])
        if rng.random() < 0.3:  # exactly-zero and repeated weights
            w[...] = np.round(w * 4) / 4
    if module.bias is not None:
        module.bias.data[...] = (np.round(rng.normal(0, 1, module.bias.shape) * 4) / 4 if ties
                                 else rng.normal(0.2, 0.5, module.bias.shape))


def _batch_norm(rng, channels: int, ties: bool) -> BatchNorm2d:
    bn = BatchNorm2d(channels, eps=0.0 if ties else 1e-5)
    if ties:  # scale exactly +-1: gamma +-1, variance 1, eps 0; quarter-unit shifts
        bn.weight.data[...] = rng.choice([-1.0, 1.0], channels)
        bn.running_var = np.ones(channels, np.float32)
        bn.running_mean = (np.round(rng.normal(0, 2, channels) * 4) / 4).astype(np.float32)
        bn.bias.data[...] = np.round(rng.normal(0, 2, channels) * 4) / 4
        return bn
    gamma = rng.normal(0, 1, channels)
    gamma[rng.random(channels) < 0.15] = 0.0
    gamma[rng.random(channels) < 0.15] = 1e-6  # tiny gamma
    bn.weight.data[...] = gamma
    bn.bias.data[...] = rng.normal(0.3, 0.5, channels)
    bn.running_mean = rng.normal(0, 0.5, channels).astype(np.float32)
    var = rng.uniform(0.2, 2.0, channels)
    var[rng.random(channels) < 0.15] = 1e-7  # tiny variance
    bn.running_var = var.astype(np.float32)
    return bn


def _weight_quant(rng, ties: bool, bits: int | None = None) -> tuple[str, int]:
    if ties:
        return "dorefa", 1
    kind = str(rng.choice(sorted(WEIGHT_BITS)))
    if bits is None or bits not in WEIGHT_BITS[kind]:
        bits = int(rng.choice(WEIGHT_BITS[kind]))
    return kind, bits


def random_network(rng: np.random.Generator, ties: bool = False) -> tuple[RandomNet, np.ndarray]:
    """(network in eval mode, uint8 images) for one random example; see the module docstring."""
    c, size = int(rng.integers(1, 4)), int(rng.integers(5, 11))
    abits, shortcut_bits = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    kind, wbits = _weight_quant(rng, ties)
    policy = Policy(wbits=wbits, abits=abits, first_last_bits=8, weight_quant=kind,
                    act_quant=str(rng.choice(["pact", "relu"])), shortcut_bits=shortcut_bits)
    net = RandomNet(policy, (c, size, size), num_classes=int(rng.integers(2, 11)))
    h = w = size
    flat = None  # features once flattened
    for i in range(int(rng.integers(1, 4))):
        choice = rng.random()
        if flat is None and choice < 0.55:  # conv [bn] [pool] act
            k = int(rng.integers(1, min(3, h) + 1))
            stride, pad = int(rng.integers(1, 3)), int(rng.integers(0, k // 2 + 1))
            cout = int(rng.integers(1, 7))
            wk, wb = _weight_quant(rng, ties, 8 if i == 0 else None)
            conv = QConv2d(c, cout, k, stride, pad, bias=bool(rng.random() < 0.4),
                           weight_quant=wk, wbits=wb)
            _weights(rng, conv, ties)
            net.add(f"conv{i}", conv)
            h, w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
            c = cout
            if rng.random() < 0.7:
                net.add(f"bn{i}", _batch_norm(rng, c, ties))
            pool_first = min(h, w) >= 2 and rng.random() < 0.3
            if pool_first:  # SVHN's conv -> bn -> maxpool -> act
                net.add(f"pool{i}", MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            net.add(f"act{i}", _act(rng, int(rng.integers(1, 9)), ties))
            if not pool_first and min(h, w) >= 2 and rng.random() < 0.3:
                net.add(f"pool{i}", MaxPool2d(2, 2))
                h, w = h // 2, w // 2
        elif flat is None and choice < 0.8 and i > 0:  # a ResNet basic block on the stream
            even = h % 2 == 0 and w % 2 == 0  # option-A shortcuts halve even sizes only
            stride = 2 if even and min(h, w) >= 4 and rng.random() < 0.5 else 1
            cout = c * 2 if stride == 2 else c
            block = BasicBlock(net, c, cout, stride)
            for module in block.modules():
                if isinstance(module, QConv2d):
                    _weights(rng, module, ties)
                elif isinstance(module, ActQuant):
                    _set_range(rng, module, ties)
            block.bn1 = _batch_norm(rng, cout, ties)
            block.bn2 = _batch_norm(rng, cout, ties)
            net.add(f"block{i}", block)
            c, h, w = cout, h // stride, w // stride
        elif flat is None and choice < 0.9 and min(h, w) >= 2:  # an average pool on codes
            net.add(f"avg{i}", AvgPool2d(2, 2))
            h, w = h // 2, w // 2
        else:  # flatten, linear, act
            if flat is None:
                net.add(f"flatten{i}", Flatten())
                flat = c * h * w
            out = int(rng.integers(1, 9))
            wk, wb = _weight_quant(rng, ties)
            linear = QLinear(flat, out, bias=True, weight_quant=wk, wbits=wb)
            _weights(rng, linear, ties)
            net.add(f"linear{i}", linear)
            net.add(f"act{i}", _act(rng, int(rng.integers(1, 9)), ties))
            flat = out
    if flat is None:
        if rng.random() < 0.5:
            net.add("pool", AvgPool2d("global"))
            h = w = 1
        net.add("flatten", Flatten())
        flat = c * h * w
    fc = QLinear(flat, net.num_classes, bias=True, weight_quant=kind if kind != "sawb0" else "dorefa",
                 wbits=8 if not ties else 1)
    _weights(rng, fc, ties)
    net.add("fc", fc)
    images = rng.integers(0, 256, size=(int(rng.integers(1, 5)), *net.input_shape), dtype=np.uint8)
    if rng.random() < 0.3:  # saturated pixels
        images[..., :1] = rng.choice([0, 255])
    return net.eval(), images
