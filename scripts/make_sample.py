"""Make tinypact/data/sample/fashion_mnist_sample.npz, the Fashion-MNIST sample bundled with tinypact.

    python scripts/make_sample.py [--source /usr/share/datasets/fashion-mnist] [--out PATH]

Reads the official Fashion-MNIST IDX files (Debian's `dataset-fashion-mnist` package by default;
the upstream .gz files work too), checks the MD5 of each decompressed file, and keeps a
class-balanced random subset: TRAIN_PER_CLASS images of each class from the training split and
TEST_PER_CLASS from the test split, chosen with numpy's default_rng(SEED) and kept in their
original order. The npz holds, for split in (train, test):
    {split}_images uint8 (n, 1, 28, 28), {split}_labels uint8 (n,), {split}_index int32 (n,)
where {split}_index is each image's position in the official file. The zip is written with fixed
timestamps and no compression randomness, so the output is byte-for-byte reproducible.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from tinypact.data.datasets import (  # noqa: E402
    DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_FILES, SAMPLE_PATH, parse_idx)

SEED = 20180516  # arXiv 1805.06085 (PACT)
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100


def read_verified(source: Path, stem: str) -> np.ndarray:
    for path in (source / (stem + ".gz"), source / stem):
        if path.is_file():
            raw = path.read_bytes()
            raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            got, want = hashlib.md5(raw).hexdigest(), FASHION_MNIST_FILES[stem][1]
            if got != want:
                sys.exit(f"error: {path} decompresses to md5 {got}, expected {want}")
            return parse_idx(raw, str(path))
    sys.exit(f"error: no {stem}(.gz) in {source}; apt-get install dataset-fashion-mnist")


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_FASHION_MNIST_DIR)
    parser.add_argument("--out", type=Path, default=SAMPLE_PATH)
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, prefix, per_class in (("train", "train", TRAIN_PER_CLASS),
                                     ("test", "t10k", TEST_PER_CLASS)):
        images = read_verified(args.source, f"{prefix}-images-idx3-ubyte")
        labels = read_verified(args.source, f"{prefix}-labels-idx1-ubyte")
        index = balanced_subset(labels, per_class, rng)
        arrays[f"{split}_images"] = images[index][:, None]
        arrays[f"{split}_labels"] = labels[index]
        arrays[f"{split}_index"] = index
    write_npz(args.out, arrays)
    md5 = hashlib.md5(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out}: {args.out.stat().st_size} bytes, md5 {md5}, "
          f"train {len(arrays['train_labels'])}, test {len(arrays['test_labels'])}")


if __name__ == "__main__":
    main()
