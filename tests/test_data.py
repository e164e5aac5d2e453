"""tinypact.data: loaders on small files written in the official formats, transforms, DataLoader.

The writers below (`idx_bytes`, `cifar_tar`, `svhn_mat`) produce files laid out exactly like
the official ones; tests/test_download.py serves them over HTTP.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
from hypothesis import given
from hypothesis import strategies as st

from tinypact.data import (
    BrightnessContrast,
    DataError,
    DataLoader,
    Dataset,
    RandomCrop,
    RandomHorizontalFlip,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_sample,
    load_svhn,
    parse_idx,
    resize_bilinear,
    to_float,
    train_transform,
)
from tinypact.data import datasets as ds

RNG = np.random.default_rng(1234)


# --------------------------------------------------------------------------- official-format writers

def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX uint8 file: 0x0000, type 0x08, ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fashion_files(n_train: int = 30, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Small Fashion-MNIST-shaped arrays keyed by official file stem."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        out[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        out[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    return out


def patch_fashion_md5s(monkeypatch, files: dict[str, np.ndarray]) -> None:
    """Make the checksum table describe `files` (gz md5 of gzip.compress(..., mtime=0))."""
    table = {stem: (hashlib.md5(gzip.compress(idx_bytes(a), mtime=0)).hexdigest(),
                    hashlib.md5(idx_bytes(a)).hexdigest()) for stem, a in files.items()}
    monkeypatch.setattr(ds, "FASHION_MNIST_FILES", table)


def cifar_batch_pickle(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """A CIFAR-10 python batch: pickled dict with bytes keys, data (n, 3072) uint8 in CHW order."""
    batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
             b"data": images.reshape(len(images), 3072),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    return pickle.dumps(batch, protocol=2)


def cifar_batch_python2(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The bytes Python 2's cPickle.dump(batch, f, 2) writes for an official CIFAR-10 batch.

    Written opcode by opcode (Python 3 cannot produce py2 `str` objects): str keys, the array
    reduced through numpy.core.multiarray._reconstruct with its data as a py2 str (BINSTRING).
    """
    def short(b: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(b)]) + b

    def integer(v: int) -> bytes:  # BININT1 / BININT2
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    data = images.reshape(len(images), 3072)
    raw = data.tobytes()
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85"
             + short(b"b") + b"\x87R"
             + b"(" + integer(1) + integer(data.shape[0]) + integer(3072) + b"\x86"
             + b"cnumpy\ndtype\n" + short(b"u1") + integer(0) + integer(1) + b"\x87R"
             + b"(" + integer(3) + short(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff"
             + integer(0) + b"tb"
             + b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb")
    label_list = b"](" + b"".join(integer(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + short(b"batch_label") + short(b"testing batch 1 of 1")
            + short(b"data") + array + short(b"labels") + label_list + b"u.")


def cifar_tar(per_batch: int = 4, seed: int = 0, override: dict[str, bytes] | None = None
              ) -> tuple[bytes, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """cifar-10-python.tar.gz bytes with cifar-10-batches-py/data_batch_1..5 + test_batch."""
    rng = np.random.default_rng(seed)
    arrays, buf = {}, io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(0, 10, per_batch)
            arrays[name] = (images, labels)
            blob = (override or {}).get(name) or cifar_batch_pickle(images, labels, name)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue(), arrays


def svhn_mat(path: Path, n: int = 6, seed: int = 0, **replace) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN .mat: X (32, 32, 3, n) uint8, y (n, 1) in 1..10 (10 = digit 0). Returns X, y."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    y[0, 0] = 10
    variables = {"X": x, "y": y, **replace}
    scipy.io.savemat(path, {k: v for k, v in variables.items() if v is not None})
    return x, y


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")


# --------------------------------------------------------------------------- Fashion-MNIST

def test_parse_idx_round_trip_and_bad_headers():
    a = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(a)), a)
    raw = idx_bytes(a)
    for bad, what in ((b"\x00\x00\x0d\x03" + raw[4:], "float type code"),
                      (b"\x01" + raw[1:], "nonzero magic"),
                      (raw[:-1], "one byte short"),
                      (raw + b"\x00", "one byte long"),
                      (raw[:6], "truncated header"),
                      (b"", "empty")):
        with pytest.raises(DataError) as info:
            parse_idx(bad, "x")
        assert "\n" not in str(info.value), f"{what}: message must be one line"


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_dir(tmp_path, monkeypatch, no_debian, gz):
    files = fashion_files()
    patch_fashion_md5s(monkeypatch, files)
    for stem, a in files.items():
        write(tmp_path / "fashion-mnist" / (stem + (".gz" if gz else "")),
              gzip.compress(idx_bytes(a)) if gz else idx_bytes(a))
    for split, prefix in (("train", "train"), ("test", "t10k")):
        d = load_dataset("fmnist", split, data_dir=tmp_path, download=False)
        assert d.name == "fashion-mnist" and d.split == split
        assert d.images.dtype == np.uint8 and d.labels.dtype == np.int64
        np.testing.assert_array_equal(d.images[:, 0], files[f"{prefix}-images-idx3-ubyte"])
        np.testing.assert_array_equal(d.labels, files[f"{prefix}-labels-idx1-ubyte"])
        assert d.classes[0] == "T-shirt/top" and d.num_classes == 10


def test_fashion_mnist_falls_back_to_debian_dir(tmp_path, monkeypatch):
    files = fashion_files(seed=3)
    patch_fashion_md5s(monkeypatch, files)
    debian = tmp_path / "debian"
    for stem, a in files.items():  # Debian recompresses: a different gzip, same content
        write(debian / (stem + ".gz"), gzip.compress(idx_bytes(a), compresslevel=1, mtime=7))
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", debian)
    d = load_fashion_mnist("test", data_dir=tmp_path / "empty", download=False)
    assert d.source == str(debian)
    np.testing.assert_array_equal(d.images[:, 0], files["t10k-images-idx3-ubyte"])


def test_fashion_mnist_bad_local_copy_is_refused_offline(tmp_path, monkeypatch, no_debian):
    files = fashion_files()
    patch_fashion_md5s(monkeypatch, files)
    for stem, a in files.items():
        write(tmp_path / "fashion-mnist" / (stem + ".gz"), gzip.compress(idx_bytes(a)))
    other = fashion_files(seed=9)["train-images-idx3-ubyte"]
    write(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(other)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as info:
        load_fashion_mnist("train", data_dir=tmp_path, download=False)
    assert "\n" not in str(info.value)


def test_fashion_mnist_missing_offline_names_url_and_path(tmp_path, no_debian):
    with pytest.raises(DataError) as info:
        load_fashion_mnist("train", data_dir=tmp_path, download=False)
    msg = str(info.value)
    expected_path = str(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    assert expected_path in msg and ds.FASHION_MNIST_URLS[0] in msg and "\n" not in msg, msg


@pytest.mark.skipif(not ds.DEBIAN_FASHION_MNIST_DIR.is_dir(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_real_fashion_mnist_test_split_from_debian(tmp_path):
    """The Debian package installed on this machine holds the official test set."""
    d = load_fashion_mnist("test", data_dir=tmp_path, download=False)
    assert d.images.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(d.labels), [1000] * 10)


# --------------------------------------------------------------------------- CIFAR-10

def test_cifar10_from_official_tar(tmp_path, monkeypatch):
    blob, arrays = cifar_tar(per_batch=4)
    monkeypatch.setattr(ds, "CIFAR10_MD5", hashlib.md5(blob).hexdigest())
    write(tmp_path / "cifar10" / "cifar-10-python.tar.gz", blob)
    train = load_cifar10("train", data_dir=tmp_path, download=False)
    assert train.images.shape == (20, 3, 32, 32) and train.labels.dtype == np.int64
    expected = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images, expected)
    # The official row layout: 1024 red, 1024 green, 1024 blue values, each row-major.
    raw_row = arrays["data_batch_1"][0].reshape(4, 3072)[2]
    assert train.images[2, 1, 5, 7] == raw_row[1024 + 32 * 5 + 7]
    test = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(test.labels, arrays["test_batch"][1])


def test_cifar10_python2_pickle_as_in_the_official_file(tmp_path, monkeypatch):
    _, arrays = cifar_tar()
    images, labels = arrays["test_batch"]
    tar, _ = cifar_tar(override={"test_batch": cifar_batch_python2(images, labels)})
    monkeypatch.setattr(ds, "CIFAR10_MD5", hashlib.md5(tar).hexdigest())
    write(tmp_path / "cifar10" / "cifar-10-python.tar.gz", tar)
    d = load_cifar10("test", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(d.images, images)
    np.testing.assert_array_equal(d.labels, labels)


def test_cifar10_extracted_directory(tmp_path, monkeypatch):
    _, arrays = cifar_tar()
    images, labels = arrays["test_batch"]
    blob = cifar_batch_pickle(images, labels, "test_batch")
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write(folder / "test_batch", blob)
    monkeypatch.setitem(ds.CIFAR10_BATCH_MD5, "test_batch", hashlib.md5(blob).hexdigest())
    d = load_cifar10("test", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(d.images, images)

    # The train split: every missing batch file is named at once, with what to do.
    with pytest.raises(DataError) as info:
        load_cifar10("train", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert all(f"data_batch_{i} is missing" in message for i in range(1, 6)), message
    assert str(folder) in message and "\n" not in message, message

    # A batch file that is not the official one: both MD5s, and --no-checksum uses it.
    monkeypatch.setitem(ds.CIFAR10_BATCH_MD5, "test_batch", "0" * 32)
    with pytest.raises(DataError, match=f"test_batch has MD5 {hashlib.md5(blob).hexdigest()}, "
                                        f"expected {'0' * 32}.*--no-checksum"):
        load_cifar10("test", data_dir=tmp_path, download=False)
    d = load_cifar10("test", data_dir=tmp_path, download=False, verify_checksums=False)
    np.testing.assert_array_equal(d.images, images)


class _Exploit:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


@pytest.mark.parametrize("case", ["code", "not-a-dict", "missing-labels", "wrong-shape", "garbage"])
def test_cifar10_refuses_bad_pickles(tmp_path, monkeypatch, case):
    marker = tmp_path / "pwned"
    images = np.zeros((2, 3, 32, 32), np.uint8)
    blob = {
        "code": pickle.dumps({b"data": _Exploit(str(marker)), b"labels": [0, 1]}, protocol=2),
        "not-a-dict": pickle.dumps([images.reshape(2, -1), [0, 1]], protocol=2),
        "missing-labels": pickle.dumps({b"data": images.reshape(2, -1)}, protocol=2),
        "wrong-shape": pickle.dumps({b"data": images.reshape(2, 3, 1024), b"labels": [0, 1]}),
        "garbage": b"not a pickle at all",
    }[case]
    tar, _ = cifar_tar(override={"test_batch": blob})
    monkeypatch.setattr(ds, "CIFAR10_MD5", hashlib.md5(tar).hexdigest())
    write(tmp_path / "cifar10" / "cifar-10-python.tar.gz", tar)
    with pytest.raises(DataError) as info:
        load_cifar10("test", data_dir=tmp_path, download=False)
    assert "\n" not in str(info.value) and "test_batch" in str(info.value), str(info.value)
    assert not marker.exists(), "the unpickler ran code from the file"


def test_cifar10_corrupt_archive(tmp_path, monkeypatch):
    blob = b"\x1f\x8b" + b"\x00" * 100
    monkeypatch.setattr(ds, "CIFAR10_MD5", hashlib.md5(blob).hexdigest())
    write(tmp_path / "cifar10" / "cifar-10-python.tar.gz", blob)
    with pytest.raises(DataError, match="not the CIFAR-10 python archive"):
        load_cifar10("train", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- SVHN

def _svhn_setup(tmp_path, monkeypatch, split="train", **replace):
    path = tmp_path / "svhn" / ds.SVHN_FILES[split][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = svhn_mat(path, **replace)
    monkeypatch.setitem(ds.SVHN_FILES, split, (path.name, hashlib.md5(path.read_bytes()).hexdigest()))
    return x, y


def test_svhn_layout_labels_and_resize(tmp_path, monkeypatch):
    x, y = _svhn_setup(tmp_path, monkeypatch)
    d32 = load_svhn("train", data_dir=tmp_path, download=False, size=None)
    assert d32.images.shape == (6, 3, 32, 32)
    assert d32.images[4, 2, 10, 20] == x[10, 20, 2, 4], "X is (row, col, channel, n)"
    expected = y.ravel().astype(np.int64) % 10
    np.testing.assert_array_equal(d32.labels, expected)
    assert d32.labels[0] == 0, "label 10 means digit 0"
    d40 = load_dataset("svhn", "train", data_dir=tmp_path, download=False)
    assert d40.images.shape == (6, 3, 40, 40)
    np.testing.assert_array_equal(d40.images, resize_bilinear(d32.images, 40))


@pytest.mark.parametrize("replace, fragment", [
    ({"X": np.zeros((28, 28, 3, 6), np.uint8)}, "expected uint8 (32, 32, 3, N)"),
    ({"X": np.zeros((32, 32, 3, 6), np.float64)}, "expected uint8 (32, 32, 3, N)"),
    ({"y": np.ones((5, 1), np.uint8)}, "expected uint8 (32, 32, 3, N)"),
    ({"y": None}, "lacks the variables X and y"),
    ({"y": np.zeros((6, 1), np.uint8)}, "expected [1, 10]"),
])
def test_svhn_bad_mat(tmp_path, monkeypatch, replace, fragment):
    _svhn_setup(tmp_path, monkeypatch, split="test", **replace)
    with pytest.raises(DataError) as info:
        load_svhn("test", data_dir=tmp_path, download=False)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_svhn_not_a_mat_file(tmp_path, monkeypatch):
    path = write(tmp_path / "svhn" / "test_32x32.mat", b"<html>captive portal</html>")
    monkeypatch.setitem(ds.SVHN_FILES, "test", (path.name, hashlib.md5(path.read_bytes()).hexdigest()))
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        load_svhn("test", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------- sample, names

def test_sample_is_balanced_and_real_fashion_mnist(tmp_path):
    train, test = load_sample("train"), load_dataset("sample", "test")
    assert train.images.shape == (5000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(train.labels), [500] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
    assert ds.SAMPLE_PATH.stat().st_size < 4_000_000
    for name in ("LICENSE", "README.md"):
        assert (ds.SAMPLE_PATH.parent / name).is_file()
    # Provenance: every test image is the official one at the recorded index.
    if not ds.DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("provenance needs Debian's dataset-fashion-mnist package")
    with np.load(ds.SAMPLE_PATH) as npz:
        index = npz["test_index"]
    full = load_fashion_mnist("test", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(test.images, full.images[index])
    np.testing.assert_array_equal(test.labels, full.labels[index])


@pytest.mark.parametrize("name, split, fragment", [
    ("imagenet", "train", "unknown data set"),
    ("sample", "validation", "no split"),
    ("cifar10", "extra", "no split"),
])
def test_bad_names(name, split, fragment):
    with pytest.raises(DataError, match=fragment):
        load_dataset(name, split)


def test_dataset_subset_and_validation():
    d = load_sample("test")
    sub = d.subset([5, 1])
    np.testing.assert_array_equal(sub.labels, d.labels[[5, 1]])
    assert len(sub) == 2 and sub.shape == (1, 28, 28)
    with pytest.raises(ValueError):
        Dataset("x", "train", np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.int64), ("a",))


# --------------------------------------------------------------------------- transforms

def test_to_float():
    x = to_float(np.array([[[[0, 51, 255]]]], np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), [0.0, 0.2, 1.0], rtol=1e-7)


@given(st.integers(0, 4), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_random_crop_is_a_window_of_the_zero_padded_image(padding, n, seed):
    images = np.random.default_rng(seed).integers(1, 256, (n, 2, 6, 7), dtype=np.uint8)
    out = RandomCrop(padding)(images, np.random.default_rng(seed))
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    for i in range(n):
        windows = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                   if np.array_equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 7])]
        assert windows, f"image {i}: crop with padding {padding} is no window of the padded image"


def test_random_crop_uses_every_offset():
    images = np.arange(36, dtype=np.uint8).reshape(1, 1, 6, 6).repeat(2000, axis=0) + 1
    out = RandomCrop(1)(images, np.random.default_rng(0))
    # The top-left output pixel identifies the offset: 0 (padding) or one of 1, 2, 7, 8 ...
    assert len({tuple(o[0, :2, :2].ravel()) for o in out}) == 9


def test_horizontal_flip():
    images = RNG.integers(0, 256, (50, 3, 4, 5), dtype=np.uint8)
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(images, RNG), images[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(images, RNG), images)
    out = RandomHorizontalFlip(0.5)(images, np.random.default_rng(1))
    flipped = [np.array_equal(o, i[..., ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 40


def test_brightness_contrast():
    images = RNG.integers(0, 256, (8, 3, 5, 5), dtype=np.uint8)
    identity = BrightnessContrast(brightness=0.0, contrast=(1.0, 1.0))
    np.testing.assert_array_equal(identity(images, RNG), images)
    # A flat image is unchanged by contrast, so it only moves by the brightness shift.
    flat = np.full((200, 1, 3, 3), 100, np.uint8)
    out = BrightnessContrast(30.0, (0.5, 1.5))(flat, np.random.default_rng(0)).astype(int)
    assert (out == out[:, :, :1, :1]).all()
    assert out.min() >= 70 and out.max() <= 130 and len(np.unique(out)) > 30
    # Contrast scales around the per-channel mean; results clip to [0, 255].
    two = np.array([[[[0, 200]]]], np.uint8)
    doubled = BrightnessContrast(0.0, (2.0, 2.0))(two, RNG)
    np.testing.assert_array_equal(doubled.ravel(), [0, 255])  # (0-100)*2+100 = -100 -> 0


def test_resize_bilinear_hand_example():
    x = np.array([[[[0, 100]]]], np.uint8).repeat(2, axis=2)  # 1x1x2x2
    out = resize_bilinear(x, 4)
    # Half-pixel centres: sample points -0.25, 0.25, 0.75, 1.25 -> clamp -> 0, 25, 75, 100.
    np.testing.assert_array_equal(out[0, 0, 0], [0, 25, 75, 100])
    assert (out[0, 0] == out[0, 0, :1]).all()


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 12), st.integers(1, 12),
       st.integers(0, 2**32 - 1))
def test_resize_bilinear_matches_scipy(h, w, out_h, out_w, seed):
    images = np.random.default_rng(seed).integers(0, 256, (2, 2, h, w), dtype=np.uint8)
    got = resize_bilinear(images, (out_h, out_w)).astype(float)
    # scipy's grid_mode zoom with edge clamping is the same half-pixel-centre bilinear map.
    ref = np.stack([[scipy.ndimage.zoom(c.astype(float), (out_h / h, out_w / w), order=1,
                                        grid_mode=True, mode="nearest") for c in im]
                    for im in images])
    near_half = np.abs(ref - np.floor(ref) - 0.5) < 1e-3  # float32 vs float64 rounding ties
    diff = np.abs(got - np.floor(ref + 0.5))
    assert (diff[~near_half] == 0).all() and (diff <= 1).all(), (
        f"{h}x{w} -> {out_h}x{out_w}: max diff {diff.max()} at {np.argwhere(diff > 0)[:3]}")


def test_train_transform_recipes():
    assert repr(train_transform("cifar10")) == \
        "Compose([RandomCrop(padding=4), RandomHorizontalFlip(p=0.5)])"
    assert isinstance(train_transform("svhn"), BrightnessContrast)
    assert train_transform("fashion-mnist") is None and train_transform("sample") is None
    with pytest.raises(ValueError):
        train_transform("mnist")


# --------------------------------------------------------------------------- DataLoader

def _toy(n: int = 23) -> Dataset:
    images = np.arange(n * 4, dtype=np.uint8).reshape(n, 1, 2, 2)
    return Dataset("toy", "train", images, np.arange(n, dtype=np.int64) % 10, tuple("0123456789"))


def test_loader_covers_each_sample_once_per_epoch():
    d = _toy(23)
    loader = DataLoader(d, batch_size=5, shuffle=True, seed=3)
    assert len(loader) == 5
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    order = loader.epoch_order(0)
    assert sorted(order) == list(range(23)) and list(order) != list(range(23))
    x, y = batches[1]
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (5, 1, 2, 2)
    np.testing.assert_array_equal(x, d.images[order[5:10]] / np.float32(255))
    np.testing.assert_array_equal(y, d.labels[order[5:10]])
    assert loader.epoch == 1 and loader.position == 0
    dropped = DataLoader(d, batch_size=5, drop_last=True, shuffle=False, as_float=False)
    xs = [x for x, _ in dropped]
    assert len(dropped) == 4 and len(xs) == 4 and xs[0].dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate(xs), d.images[:20])


@given(st.integers(0, 60), st.integers(1, 16), st.booleans(), st.booleans(), st.integers(0, 3))
def test_loader_batches_partition_the_epoch(n, batch_size, shuffle, drop_last, epoch):
    d = _toy(n)
    loader = DataLoader(d, batch_size, shuffle=shuffle, seed=epoch, drop_last=drop_last)
    loader.set_epoch(epoch)
    batches = list(loader)
    sizes = [len(y) for _, y in batches]
    served = loader.epoch_order(epoch)[:sum(sizes)]
    got = np.concatenate([x for x, _ in batches]) if batches else np.zeros((0, 1, 2, 2))
    np.testing.assert_array_equal(got, to_float(d.images[served]))
    kept = n - n % batch_size if drop_last else n
    assert len(sizes) == len(loader) and sum(sizes) == kept and len(set(served.tolist())) == kept, (
        f"n={n} batch_size={batch_size} drop_last={drop_last}: batch sizes {sizes}")
    assert all(s == batch_size for s in sizes[:-1])


def test_epoch_order_depends_only_on_seed_and_epoch():
    d = _toy(40)
    a = DataLoader(d, batch_size=8, seed=7)
    for _ in range(3):
        list(a)
    b = DataLoader(d, batch_size=8, seed=7)
    b.set_epoch(3)
    np.testing.assert_array_equal([y for _, y in a], [y for _, y in b])
    orders = [tuple(a.epoch_order(e)) for e in range(5)]
    assert len(set(orders)) == 5, "epochs must be shuffled differently"
    assert tuple(DataLoader(d, 8, seed=8).epoch_order(0)) != orders[0]


@pytest.mark.parametrize("stop_after", [0, 10, 15])
def test_resume_reproduces_the_uninterrupted_run(stop_after):
    """Interrupt after batch `stop_after` (8 batches per epoch), save state as JSON, resume."""
    d = load_sample("test").subset(np.arange(100))

    def make() -> DataLoader:
        return DataLoader(d, batch_size=14, seed=5, transform=train_transform("cifar10"))

    uninterrupted = make()
    full = [batch for _ in range(3) for batch in uninterrupted]
    assert len(full) == 24
    loader, got = make(), []
    while len(got) <= stop_after:
        for batch in loader:
            got.append(batch)
            if len(got) > stop_after:
                break
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    while len(got) < len(full):
        got.extend(resumed)
    for i, ((xa, ya), (xb, yb)) in enumerate(zip(full, got)):
        assert np.array_equal(ya, yb) and np.array_equal(xa, xb), (
            f"batch {i} differs after resuming from {state}")


def test_augmentation_is_seeded_per_batch():
    d = load_sample("test").subset(np.arange(64))
    t = train_transform("cifar10")
    a = DataLoader(d, 16, seed=1, transform=t)
    x1 = a.batch(2, 1)[0]
    np.testing.assert_array_equal(x1, DataLoader(d, 16, seed=1, transform=t).batch(2, 1)[0])
    assert not np.array_equal(x1, DataLoader(d, 16, seed=2, transform=t).batch(2, 1)[0])
    raw = DataLoader(d, 16, seed=1, transform=t, as_float=False).batch(2, 1)[0]
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(to_float(raw), x1)


def test_state_at_epoch_end_and_size_check():
    loader = DataLoader(_toy(10), batch_size=5)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()  # taken while the last batch of epoch 0 is held
    assert state == {"seed": 0, "epoch": 0, "position": 2, "num_samples": 10}
    resumed = DataLoader(_toy(10), batch_size=5)
    resumed.load_state_dict(state)
    first = next(iter(resumed))[1]
    np.testing.assert_array_equal(first, resumed.batch(1, 0)[1])
    assert resumed.epoch == 1
    with pytest.raises(ValueError, match="for 10 samples"):
        DataLoader(_toy(11), 5).load_state_dict(state)
