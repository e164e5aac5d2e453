"""End to end: a small convnet learns a fixed synthetic task (loss falls, accuracy rises)."""
from __future__ import annotations

import numpy as np

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
