"""End to end: a small convnet learns a fixed synthetic task (loss falls, accuracy rises)."""
from __future__ import annotations

import numpy as np
import pytest

import tinypact as tp
from tinypact import Tensor, nn, optim
from tinypact import functional as F


def synthetic_task(n: int = 128, seed: int = 0):
    """8x8 one-channel images; the label says which quadrant holds a bright 3x3 blob."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.3, size=(n, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, n)
    for i, label in enumerate(labels):
        r, c = 4 * (label // 2) + rng.integers(0, 2), 4 * (label % 2) + rng.integers(0, 2)
        images[i, 0, r:r + 3, c:c + 3] += 1.5
    return images, labels


def test_small_convnet_loss_falls():
    tp.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.AvgPool2d("global"), nn.Flatten(), nn.Linear(16, 4))
    images, labels = synthetic_task()
    opt = optim.Adam(net.parameters(), lr=0.01)
    losses = []
    for epoch in range(12):
        for start in range(0, len(labels), 32):
            opt.zero_grad()
            loss = F.cross_entropy(net(Tensor(images[start:start + 32])), labels[start:start + 32])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    net.eval()
    test_images, test_labels = synthetic_task(seed=1)
    with tp.no_grad():
        accuracy = (net(Tensor(test_images)).data.argmax(axis=1) == test_labels).mean()
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.3 * first, f"loss fell only from {first:.3f} to {last:.3f}"
    assert accuracy > 0.9, f"held-out accuracy {accuracy:.2f} (losses {first:.3f} -> {last:.3f})"


def _steps_on(threads: int, policy: dict) -> list[np.ndarray]:
    """Three SGD steps of a fresh seeded ResNet20 on `threads` threads: its parameters after."""
    from tinypact import _threads
    from tinypact.models import build_model

    _threads.set_threads(threads)
    tp.manual_seed(0)
    net = build_model("resnet20", policy)
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    rng = np.random.default_rng(0)
    images = rng.random((8, 3, 32, 32)).astype(np.float32)  # 8 * 16 * 32 * 32: parallel kernels
    labels = rng.integers(0, 10, 8)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(Tensor(images)), labels).backward()
        opt.step()
    return [p.data.copy() for p in net.parameters()]


@pytest.mark.parametrize("policy", [
    {"wbits": 32, "abits": 32, "first_last_bits": 32, "act_quant": "relu", "shortcut_bits": 32},
    {"wbits": 2, "abits": 2, "weight_quant": "sawb", "act_quant": "pact"}])
def test_training_gives_the_same_bits_on_one_or_two_threads(policy):
    """A whole step (conv2d's blocks on the block threads, batch-norm, the quantizers, SGD on
    Numba's threads) adds in an order that does not depend on the thread count."""
    from tinypact import _threads

    if _threads._blas_threads()["set"] is None:
        pytest.skip("block threads need an OpenBLAS whose thread count can be set")
    before = _threads.workers()
    try:
        one, two = _steps_on(1, policy), _steps_on(2, policy)
    finally:
        _threads.set_threads(before)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
