"""Checks of an integer model: engine vs float64 reference (bit-exact), and vs tinypact.

    report = verify_model(model, images)          # per-layer mismatches, must all be 0
    preds = tinypact_predictions(checkpoint, images)   # needs tinypact installed (optional)
    stats = agreement(engine_preds, preds, labels)

`tinypact` is imported lazily and only by `tinypact_predictions` and `load_images` (dataset
names), so integer_engine runs without it; the model file remains the only contract.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from integer_engine.errors import EngineError
from integer_engine.executor import Engine
from integer_engine.format import IntegerModel
from integer_engine.reference import run_reference


@dataclass
class VerifyReport:
    """Per-layer element mismatches between engine and reference over `images` inputs."""

    images: int
    mismatches: dict[str, int] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    first_mismatch: dict[str, str] = field(default_factory=dict)
    engine_predictions: np.ndarray | None = None

    @property
    def total_mismatches(self) -> int:
        return sum(self.mismatches.values())

    @property
    def ok(self) -> bool:
        return self.total_mismatches == 0


def verify_model(model: IntegerModel, images: np.ndarray, batch_size: int = 64) -> VerifyReport:
    """Run engine and reference on every image; count differing output elements per layer."""
    engine = Engine(model)
    report = VerifyReport(images=len(images))
    predictions = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        got = engine.run(batch, collect=True)
        want = run_reference(model, batch)
        predictions.append(got.predictions)
        for layer in model.layers:
            g, w = got.outputs[layer.name], want[layer.name]
            bad = np.argwhere(g != w) if g.shape == w.shape else np.zeros((g.size, g.ndim), int)
            report.mismatches[layer.name] = report.mismatches.get(layer.name, 0) + len(bad)
            report.elements[layer.name] = report.elements.get(layer.name, 0) + w.size
            if len(bad) and layer.name not in report.first_mismatch:
                where = tuple(int(i) for i in bad[0])
                where_img = (where[0] + start,) + where[1:]
                report.first_mismatch[layer.name] = (
                    f"at {where_img}: engine {g[where] if g.shape == w.shape else g.shape} "
                    f"vs reference {w[where] if g.shape == w.shape else w.shape}")
    report.engine_predictions = np.concatenate(predictions) if predictions else np.zeros(0, int)
    return report


def random_images(model: IntegerModel, count: int, seed: int = 0) -> np.ndarray:
    """`count` uniformly random uint8 images of the model's input shape."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, *model.input_shape), dtype=np.uint8)


def tinypact_predictions(checkpoint: str | os.PathLike, images: np.ndarray, batch_size: int = 256
                         ) -> np.ndarray:
    """tinypact's fake-quantized eval predictions (argmax) for uint8 `images`.

    Raises EngineError if tinypact is not installed or the checkpoint cannot be rebuilt.
    """
    try:
        from tinypact.checkpoint import CheckpointError, load_checkpoint
        from tinypact.data import Dataset
        from tinypact.trainer import build_from_meta, predict
    except ImportError:
        raise EngineError("tinypact is not installed, so its predictions are unavailable") from None
    try:
        ckpt = load_checkpoint(checkpoint)
        model = build_from_meta(ckpt.meta["model"])
        model.load_state_dict(ckpt.model_state)
    except (CheckpointError, KeyError, ValueError, TypeError) as err:
        raise EngineError(f"cannot rebuild the tinypact model from {checkpoint} "
                          f"({str(err).splitlines()[0][:200]})") from None
    dataset = Dataset("verify", "test", np.ascontiguousarray(images),
                      np.zeros(len(images), dtype=np.int64), tuple(str(i) for i in range(10)))
    return np.asarray(predict(model, dataset, batch_size=batch_size))


def agreement(engine_predictions: np.ndarray, other_predictions: np.ndarray,
              labels: np.ndarray | None = None) -> dict:
    """{"images", "agree", "agreement", "engine_accuracy", "other_accuracy"} of two prediction sets."""
    a, b = np.asarray(engine_predictions), np.asarray(other_predictions)
    if a.shape != b.shape:
        raise EngineError(f"prediction counts differ: {a.shape} vs {b.shape}")
    out = {"images": int(a.size), "agree": int(np.sum(a == b)),
           "agreement": float(np.mean(a == b)) if a.size else 1.0}
    if labels is not None:
        labels = np.asarray(labels)
        out["engine_accuracy"] = float(np.mean(a == labels)) if a.size else 0.0
        out["other_accuracy"] = float(np.mean(b == labels)) if b.size else 0.0
    return out


def load_images(data: str, split: str = "test", limit: int | None = None,
                data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images (N, C, H, W), int64 labels, description) from an .npz or a dataset name.

    An .npz needs uint8 `images` (N, C, H, W) and integer `labels` (N,). A dataset name
    (fashion-mnist, svhn, cifar10, sample) is loaded through tinypact.data, if installed.
    """
    if data.endswith(".npz") or os.path.isfile(data):
        try:
            with np.load(data, allow_pickle=False) as arrays:
                images, labels = np.array(arrays["images"]), np.array(arrays["labels"])
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise EngineError(f"cannot read images/labels from {data} ({str(err).splitlines()[0][:150]})") from None
        if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),):
            raise EngineError(f"{data}: need uint8 images (N, C, H, W) and labels (N,), got "
                              f"{images.dtype} {images.shape} and {labels.shape}")
        description = data
    else:
        try:
            from tinypact.data import DataError, load_dataset
        except ImportError:
            raise EngineError(f"--data {data}: loading data sets by name needs tinypact; pass an .npz "
                              f"with uint8 'images' (N, C, H, W) and 'labels' instead") from None
        try:
            dataset = load_dataset(data, split, data_dir=data_dir)
        except DataError as err:
            raise EngineError(str(err)) from None
        images, labels = dataset.images, dataset.labels
        description = f"{dataset.name} {split}"
    if limit is not None:
        if limit < 1:
            raise EngineError("--limit must be at least 1")
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64), description
