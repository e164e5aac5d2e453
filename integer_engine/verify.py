"""Checks of an integer model: the engine against the trained model itself, and against the
plain NumPy reference.

    report = verify_model(model, images)                          # engine vs reference.py
    report = verify_against_checkpoint(model, checkpoint, images) # engine vs tinypact's forward
    stats = agreement(engine_preds, other_preds, labels)

"Bit-exact" is the second: every layer's output (codes, logits) equals what tinypact's trained,
fake-quantized model computes, layer by layer (a layer's `graph_node` names the checkpoint graph
node whose output it is). The first needs no tinypact and checks any `.tpq` file, imported ones
included: the engine's kernels and thresholds against the float epilogue evaluated directly.
`tinypact` is imported lazily, only by `verify_against_checkpoint` and `load_images` (dataset
names), so integer_engine runs without it; the model file remains the only contract.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from integer_engine.errors import EngineError
from integer_engine.executor import Engine
from integer_engine.format import IntegerModel
from integer_engine.reference import run_reference


@dataclass
class VerifyReport:
    """Per-layer element mismatches between the engine and another computation over `images`."""

    images: int
    mismatches: dict[str, int] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    first_mismatch: dict[str, str] = field(default_factory=dict)
    engine_predictions: np.ndarray | None = None
    other_predictions: np.ndarray | None = None

    @property
    def total_mismatches(self) -> int:
        return sum(self.mismatches.values())

    @property
    def ok(self) -> bool:
        return self.total_mismatches == 0

    def compare(self, name: str, got: np.ndarray, want: np.ndarray, first_image: int) -> None:
        """Count the elements where layer `name`'s output differs (images from `first_image`)."""
        if got.shape == want.shape:
            bad = np.argwhere(got != want)
        else:
            bad = np.zeros((max(got.size, 1), got.ndim), int)
        self.mismatches[name] = self.mismatches.get(name, 0) + len(bad)
        self.elements[name] = self.elements.get(name, 0) + want.size
        if len(bad) and name not in self.first_mismatch:
            if got.shape != want.shape:
                self.first_mismatch[name] = f"shapes differ: engine {got.shape} vs {want.shape}"
                return
            where = tuple(int(i) for i in bad[0])
            self.first_mismatch[name] = (f"at image {where[0] + first_image}, index {where[1:]}: "
                                         f"engine {got[where]} vs {want[where]}")


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
            report.compare(layer.name, got.outputs[layer.name], want[layer.name], start)
    report.engine_predictions = np.concatenate(predictions) if predictions else np.zeros(0, int)
    return report


def random_images(model: IntegerModel, count: int, seed: int = 0) -> np.ndarray:
    """`count` uniformly random uint8 images of the model's input shape."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, *model.input_shape), dtype=np.uint8)


def checkpoint_file(checkpoint: str | os.PathLike) -> str:
    """RUN/checkpoint.npz for a run directory, else the path itself (which must exist)."""
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    if not os.path.isfile(path):
        raise EngineError(f"checkpoint not found: {path}")
    return path


def check_source(model: IntegerModel, checkpoint: str | os.PathLike) -> None:
    """Refuse a checkpoint that is not the one `model` was exported from (its SHA-256 is in the
    model's header), so that a comparison never reports on an unrelated network."""
    path = checkpoint_file(checkpoint)
    want = (model.header.get("source") or {}).get("checkpoint_sha256")
    if not want:
        raise EngineError("the model file records no source checkpoint (an imported model?); pass "
                          "--any-checkpoint to compare with this one anyway")
    with open(path, "rb") as handle:
        got = hashlib.sha256(handle.read()).hexdigest()
    if got != want:
        raise EngineError(f"{path} is not the checkpoint this model was exported from (sha256 "
                          f"{got[:12]}..., the model's source has {want[:12]}...); export it again "
                          f"from this checkpoint, or pass --any-checkpoint to compare anyway")


def load_trained_model(checkpoint: str | os.PathLike):
    """The tinypact network of a checkpoint, in eval mode (needs tinypact installed)."""
    try:
        from tinypact.checkpoint import CheckpointError, load_checkpoint
        from tinypact.trainer import build_from_meta
    except ImportError:
        raise EngineError("tinypact is not installed, so the trained model cannot be run") from None
    path = checkpoint_file(checkpoint)
    try:
        ckpt = load_checkpoint(path)
        network = build_from_meta(ckpt.meta["model"])
        network.load_state_dict(ckpt.model_state)
    except (CheckpointError, KeyError, ValueError, TypeError) as err:
        raise EngineError(f"cannot rebuild the tinypact model from {path} "
                          f"({str(err).splitlines()[0][:200]})") from None
    return network.eval()


def verify_against_checkpoint(model: IntegerModel, checkpoint: str | os.PathLike, images: np.ndarray,
                              batch_size: int = 64, network=None) -> VerifyReport:
    """Engine vs the trained model: each layer that has a `graph_node` against tinypact's output
    of that node (codes, or float32 logits), for every image; predictions of both.
    `network`: an already built tinypact model of `checkpoint` (else it is loaded)."""
    network = load_trained_model(checkpoint) if network is None else network
    from tinypact.trainer import node_outputs  # present: the network was built by tinypact

    engine = Engine(model)
    report = VerifyReport(images=len(images))
    ours, theirs = [], []
    logits_node = model.layers[-1].attrs.get("graph_node")
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        got = engine.run(batch, collect=True)
        want = node_outputs(network, batch, batch_size)
        for layer in model.layers:
            node = layer.attrs.get("graph_node")
            if node is None:
                continue
            if node not in want:
                raise EngineError(f"the checkpoint's network has no node {node!r}: it is not the "
                                  f"network this model was exported from")
            report.compare(layer.name, got.outputs[layer.name], want[node], start)
        ours.append(got.predictions)
        theirs.append(np.argmax(want[logits_node], axis=1))
    report.engine_predictions = np.concatenate(ours) if ours else np.zeros(0, int)
    report.other_predictions = np.concatenate(theirs) if theirs else np.zeros(0, int)
    return report


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
                data_dir: str | None = None, verify_checksums: bool = True
                ) -> tuple[np.ndarray, np.ndarray, str]:
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
            dataset = load_dataset(data, split, data_dir=data_dir, verify_checksums=verify_checksums)
        except DataError as err:
            raise EngineError(str(err)) from None
        images, labels = dataset.images, dataset.labels
        description = f"{dataset.name} {split}"
    if limit is not None:
        if limit < 1:
            raise EngineError("--limit must be at least 1")
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64), description
