"""The data sets: Fashion-MNIST, CIFAR-10, SVHN and the bundled Fashion-MNIST sample.

Every loader returns a `Dataset`: uint8 images (N, C, H, W), int64 labels in [0, 10), the class
names and what a pixel means (the model input is x = pixels / 255 as float32, no mean
subtraction). Every bad input raises `DataError` with a one-line message saying what to do.

Official formats read here (docs: /work/shared/reference/networks-and-data.md):
- Fashion-MNIST: IDX files, gzipped or raw (magic 0x00000803 images, 0x00000801 labels).
  Lookup: the data dir (`<data_dir>/fashion-mnist/`), then Debian's `dataset-fashion-mnist`
  package (`/usr/share/datasets/fashion-mnist/`), then the official URLs.
- CIFAR-10: `cifar-10-python.tar.gz` holding `cifar-10-batches-py/data_batch_1..5` and
  `test_batch`, each a Python pickle of a dict with `data` (10000, 3072) uint8 in CHW order
  and `labels`. Pickles can run code when loaded; these are read with an unpickler that only
  resolves the few NumPy names an array needs, and anything but a dict with data/labels is
  refused. Also accepted: an already extracted `<data_dir>/cifar10/cifar-10-batches-py/`
  (the archive's folder as it is), whose batch files are checked against their official MD5s.
- SVHN: MATLAB v5 `.mat` (scipy.io.loadmat) with `X` (32, 32, 3, N) uint8 and `y` (N, 1)
  where label 10 means digit 0; resized to 40x40 on load (the SVHN network's input).

Every file is checked against its official MD5; `verify_checksums=False` (the CLIs'
`--no-checksum`) skips that check, to use local copies that are not the official files.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from tinypact.data.download import DataError, ensure_file, file_problem, resolve_data_dir
from tinypact.data.transforms import resize_bilinear

PIXELS = "uint8 pixels in [0, 255]; the model input is x = pixels / 255 as float32"

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
SVHN_CLASSES = tuple(str(d) for d in range(10))

ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "cifar-10": "cifar10"}
NAMES = ("fashion-mnist", "cifar10", "svhn", "sample")


@dataclass(frozen=True, eq=False)  # arrays: compare contents explicitly
class Dataset:
    """One split of a data set: images uint8 (N, C, H, W), labels int64 (N,)."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    pixels: str = PIXELS
    source: str = ""
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got "
                             f"{self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],) or self.labels.dtype != np.int64:
            raise ValueError(f"labels must be int64 ({self.images.shape[0]},), got "
                             f"{self.labels.dtype} {self.labels.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Dataset":
        """The images at `indices` (e.g. a validation split or a quick-run slice)."""
        idx = np.asarray(indices)
        return Dataset(self.name, self.split, self.images[idx], self.labels[idx], self.classes,
                       self.pixels, self.source, dict(self.info))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={self.shape}, source={self.source!r})")


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise DataError(f"{name} has no split {split!r}; use one of {', '.join(allowed)}")


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# file stem -> (md5 of the upstream .gz, md5 of the decompressed IDX file). Debian's package
# recompresses the files, so only the decompressed md5 identifies the data in every copy.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe",
                                "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79",
                               "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310",
                               "15d484375f8d13e6eb1aabb0c3f46965"),
}


def parse_idx(raw: bytes, what: str = "IDX data") -> np.ndarray:
    """Decode an IDX file (LeCun's MNIST format) holding unsigned bytes.

    Layout: 2 zero bytes, type code 0x08 (uint8), number of dims d, then d big-endian uint32
    sizes, then the data in C order.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DataError(f"{what} is not an IDX uint8 file (magic {raw[:4].hex() or 'empty'}, "
                        f"expected 00000801 or 00000803); delete it and download it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{what} is truncated inside its header; delete it and download it again")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{what} holds {len(raw) - header} bytes of data, its header {dims} "
                        f"says {expected}; delete it and download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_maybe_gzip(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is a corrupt gzip file ({e}); delete it and "
                            f"download it again") from None
    return raw


def _idx_candidates(directory: Path, stem: str) -> Iterator[Path]:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            yield directory / name


def _fashion_mnist_file(stem: str, data_dir: Path, download: bool,
                        verify: bool = True) -> tuple[bytes, Path]:
    """The decompressed, MD5-verified bytes of one Fashion-MNIST file and where they came from."""
    gz_md5, raw_md5 = FASHION_MNIST_FILES[stem]
    rejected = []
    for directory in (data_dir / "fashion-mnist", DEBIAN_FASHION_MNIST_DIR):
        for path in _idx_candidates(directory, stem):
            raw = _read_maybe_gzip(path)
            actual = hashlib.md5(raw).hexdigest()
            if actual == raw_md5 or not verify:
                return raw, path
            rejected.append(f"{path} (MD5 {actual})")
    if rejected and not download:
        raise DataError(f"{', '.join(rejected)}: not the official {stem} (the MD5 of the "
                        f"decompressed file should be {raw_md5}); replace it, allow downloads, or "
                        f"pass --no-checksum to use it as it is")
    path = ensure_file(stem + ".gz", [base + stem + ".gz" for base in FASHION_MNIST_URLS],
                       gz_md5, data_dir, subdir="fashion-mnist", download=download, verify=verify)
    raw = _read_maybe_gzip(path)
    if verify and hashlib.md5(raw).hexdigest() != raw_md5:
        raise DataError(f"{path} does not decompress to the official {stem} (md5 {raw_md5}); "
                        f"delete it and download it again")
    return raw, path


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                       download: bool = True, verify_checksums: bool = True) -> Dataset:
    """Fashion-MNIST: 60,000 train / 10,000 test 28x28 greyscale images, 10 classes, (N, 1, 28, 28)."""
    _check_split("fashion-mnist", split, ("train", "test"))
    prefix = "train" if split == "train" else "t10k"
    root = resolve_data_dir(data_dir)
    raw_images, images_path = _fashion_mnist_file(f"{prefix}-images-idx3-ubyte", root, download,
                                                  verify_checksums)
    raw_labels, _ = _fashion_mnist_file(f"{prefix}-labels-idx1-ubyte", root, download,
                                        verify_checksums)
    images = parse_idx(raw_images, f"{prefix}-images-idx3-ubyte")
    labels = parse_idx(raw_labels, f"{prefix}-labels-idx1-ubyte")
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"Fashion-MNIST {split} files disagree: images {images.shape}, "
                        f"labels {labels.shape}; delete them and download them again")
    return Dataset("fashion-mnist", split, images[:, None].copy(), _labels(labels, "Fashion-MNIST"),
                   FASHION_MNIST_CLASSES, source=str(images_path.parent))


def _labels(values: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(values).astype(np.int64).ravel()
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{what} labels range over [{labels.min()}, {labels.max()}], expected "
                        f"[0, 9]; the file is not the official one, download it again")
    return labels


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_FILE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR10_FOLDER = "cifar-10-batches-py"  # the archive's folder, also accepted already extracted
# MD5 of each batch file inside the official archive (as torchvision also checks them).
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

# The only globals a pickled ndarray needs (numpy 1.x and 2.x names; _codecs.encode is how
# protocol 2 pickles written by Python 3 store bytes).
_ndarray_reconstruct = np.ndarray((0,)).__reduce__()[0]
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except those an ndarray needs."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _cifar_batch(raw: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 python batch into images (n, 3, 32, 32) uint8 and labels (n,)."""
    try:
        # latin1: the official batches were pickled by Python 2 (str keys, str/bytes data).
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a bad file
        raise DataError(f"{what} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                        f"delete {CIFAR10_FILE} and download it again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what} holds a {type(obj).__name__}, expected a dict with data and "
                        f"labels; delete {CIFAR10_FILE} and download it again")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{what} lacks the keys data/labels (has {sorted(map(str, batch))}); "
                        f"delete {CIFAR10_FILE} and download it again")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3072 or labels.shape != (data.shape[0],)):
        raise DataError(f"{what} has data {getattr(data, 'dtype', type(data).__name__)} "
                        f"{getattr(data, 'shape', '')} and {labels.shape} labels, expected uint8 "
                        f"(n, 3072) and (n,); delete {CIFAR10_FILE} and download it again")
    return data.reshape(-1, 3, 32, 32), _labels(labels, what)


def _cifar_extracted(folder: Path, names: Sequence[str], verify: bool) -> list[bytes]:
    """The batch files `names` from an extracted `cifar-10-batches-py/` folder; DataError listing
    every missing or mismatching file of the folder at once."""
    problems = {name: problem for name, md5 in CIFAR10_BATCH_MD5.items()
                if (problem := file_problem(folder / name, md5 if verify else None))}
    if any(name in problems for name in names):
        listed = "; ".join(f"{name} {problem}" for name, problem in problems.items())
        raise DataError(f"{folder}: {listed}; copy them from the official archive's "
                        f"{CIFAR10_FOLDER}/, pass --no-checksum to use mismatching files as they "
                        f"are, or remove the folder to use {folder.parent / CIFAR10_FILE} instead")
    return [(folder / name).read_bytes() for name in names]


def _cifar_members(data_dir: Path, names: Sequence[str], download: bool,
                   verify: bool = True) -> tuple[list[bytes], str]:
    extracted = data_dir / "cifar10" / CIFAR10_FOLDER
    if extracted.is_dir():
        return _cifar_extracted(extracted, names, verify), str(extracted)
    archive = ensure_file(CIFAR10_FILE, [CIFAR10_URL], CIFAR10_MD5, data_dir, subdir="cifar10",
                          download=download, verify=verify)
    try:
        # Members are read into memory by name, never extracted: no path traversal possible.
        with tarfile.open(archive, "r:gz") as tar:
            blobs = []
            for n in names:
                member = tar.extractfile(f"cifar-10-batches-py/{n}")
                if member is None:
                    raise KeyError(n)
                blobs.append(member.read())
    except (tarfile.TarError, KeyError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive} is not the CIFAR-10 python archive ({type(e).__name__}: "
                        f"{e}); delete it and download it again") from None
    return blobs, str(archive)


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = True, verify_checksums: bool = True) -> Dataset:
    """CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images, 10 classes, (N, 3, 32, 32).

    From `<data_dir>/cifar10/cifar-10-python.tar.gz` (downloaded if missing) or, if it exists,
    the extracted folder `<data_dir>/cifar10/cifar-10-batches-py/`.
    """
    _check_split("cifar10", split, ("train", "test"))
    names = CIFAR10_BATCHES[split]
    blobs, source = _cifar_members(resolve_data_dir(data_dir), names, download, verify_checksums)
    parts = [_cifar_batch(raw, f"cifar-10-batches-py/{n}") for raw, n in zip(blobs, names)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Dataset("cifar10", split, images, labels, CIFAR10_CLASSES, source=source)


# --------------------------------------------------------------------------- SVHN

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}
SVHN_SIZE = 40
# tensorpack's svhn-digit-dorefa trains on train and extra together (604,388 images).
SVHN_TRAIN_EXTRA = "train+extra"


def _svhn_file(split: str, data_dir: str | os.PathLike | None, download: bool,
               verify: bool) -> Path:
    """The verified .mat file of `split`; if the train split cannot be had, a DataError that also
    lists the test file training will need next if it is missing or mismatching (the test split
    alone, what evaluation and the engine read, asks for nothing else)."""
    filename, md5 = SVHN_FILES[split]
    try:
        return ensure_file(filename, [SVHN_URL + filename], md5, data_dir, subdir="svhn",
                           download=download, verify=verify)
    except DataError as err:
        if split != "train":
            raise
        folder = resolve_data_dir(data_dir) / "svhn"
        others = [f"{name} {problem} (from {SVHN_URL + name})"
                  for other, (name, other_md5) in SVHN_FILES.items()
                  if other in ("train", "test") and other != split
                  and (problem := file_problem(folder / name, other_md5 if verify else None))]
        if not others:
            raise
        raise DataError(f"{err}; in the same folder {'; '.join(others)}") from None


def load_svhn(split: str = "train", data_dir: str | os.PathLike | None = None,
              download: bool = True, size: int | None = SVHN_SIZE,
              verify_checksums: bool = True) -> Dataset:
    """SVHN cropped digits (73,257 train / 26,032 test / 531,131 extra), label 10 -> 0.

    Images are resized 32 -> `size` (default 40, the SVHN network's input) with
    `resize_bilinear`; `size=None` keeps 32x32. Result (N, 3, size, size). Split
    "train+extra" is train followed by extra (2.9 GB of uint8 at 40x40; about twice that
    while the two are joined).
    """
    from scipy.io import loadmat  # imported here: only SVHN needs scipy

    _check_split("svhn", split, (*SVHN_FILES, SVHN_TRAIN_EXTRA))
    if split == SVHN_TRAIN_EXTRA:
        parts = [load_svhn(part, data_dir, download, size, verify_checksums)
                 for part in ("train", "extra")]
        return Dataset("svhn", split, np.concatenate([p.images for p in parts]),
                       np.concatenate([p.labels for p in parts]), SVHN_CLASSES,
                       source=" + ".join(p.source for p in parts))
    path = _svhn_file(split, data_dir, download, verify_checksums)
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # noqa: BLE001 - scipy raises many types for a bad file
        raise DataError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {e}); "
                        f"delete it and download it again") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DataError(f"{path} lacks the variables X and y; delete it and download it again")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8 or y.size != x.shape[3]:
        raise DataError(f"{path} has X {x.dtype} {x.shape} and y {y.shape}, expected uint8 "
                        f"(32, 32, 3, N) and (N, 1); delete it and download it again")
    labels = np.asarray(y).astype(np.int64).ravel()
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{path} has labels in [{labels.min()}, {labels.max()}], expected "
                        f"[1, 10]; delete it and download it again")
    labels[labels == 10] = 0
    images = x.transpose(3, 2, 0, 1)  # (32, 32, 3, N) -> (N, 3, 32, 32), a view
    # Resizing straight from the view saves a full-size copy (225 MB for the training split).
    images = (resize_bilinear(images, size) if size not in (None, 32)
              else np.ascontiguousarray(images))
    return Dataset("svhn", split, images, labels, SVHN_CLASSES, source=str(path))


# --------------------------------------------------------------------------- bundled sample

SAMPLE_PATH = Path(__file__).resolve().parent / "sample" / "fashion_mnist_sample.npz"


def load_sample(split: str = "train") -> Dataset:
    """The Fashion-MNIST sample shipped inside the package (works offline; see sample/README.md)."""
    _check_split("sample", split, ("train", "test"))
    try:
        with np.load(SAMPLE_PATH, allow_pickle=False) as npz:
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise DataError(f"the bundled sample {SAMPLE_PATH} is unreadable ({e}); reinstall "
                        f"tinypact") from None
    return Dataset("sample", split, images, labels.astype(np.int64), FASHION_MNIST_CLASSES,
                   source=str(SAMPLE_PATH))


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = True, verify_checksums: bool = True) -> Dataset:
    """Load a data set by name: 'fashion-mnist' (alias 'fmnist'), 'cifar10', 'svhn', 'sample'.

    `verify_checksums=False` uses local files whose MD5 is not the official one as they are.
    """
    canonical = ALIASES.get(name.lower(), name.lower())
    if canonical == "fashion-mnist":
        return load_fashion_mnist(split, data_dir, download, verify_checksums)
    if canonical == "cifar10":
        return load_cifar10(split, data_dir, download, verify_checksums)
    if canonical == "svhn":
        return load_svhn(split, data_dir, download, verify_checksums=verify_checksums)
    if canonical == "sample":
        return load_sample(split)
    raise DataError(f"unknown data set {name!r}; use one of {', '.join(NAMES)} (or fmnist)")
