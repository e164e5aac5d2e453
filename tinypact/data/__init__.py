"""Data sets, downloads, augmentation and batching.

    from tinypact.data import load_dataset, DataLoader, train_transform
    train = load_dataset("fashion-mnist", "train", data_dir=None, download=True)
    for x, y in DataLoader(train, batch_size=128, shuffle=True, seed=0,
                           transform=train_transform("fashion-mnist")):
        ...  # x float32 (128, 1, 28, 28) = pixels / 255, y int64 (128,)

A `Dataset` keeps uint8 pixels (N, C, H, W) and int64 labels; the loader converts batches to
float32 (or hands out the uint8 pixels with `as_float=False`). Every failure to find or read
data raises `DataError` with a one-line message saying what to do.
"""
from tinypact.data.datasets import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    NAMES,
    SVHN_CLASSES,
    Dataset,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_sample,
    load_svhn,
    parse_idx,
)
from tinypact.data.download import DataError, ensure_file, md5_of, resolve_data_dir
from tinypact.data.loader import DataLoader
from tinypact.data.transforms import (
    BrightnessContrast,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    Transform,
    resize_bilinear,
    to_float,
    train_transform,
)

__all__ = [
    "NAMES", "CIFAR10_CLASSES", "FASHION_MNIST_CLASSES", "SVHN_CLASSES",
    "Dataset", "DataError", "DataLoader",
    "load_dataset", "load_fashion_mnist", "load_cifar10", "load_svhn", "load_sample",
    "parse_idx", "ensure_file", "md5_of", "resolve_data_dir",
    "Transform", "Compose", "RandomCrop", "RandomHorizontalFlip", "BrightnessContrast",
    "resize_bilinear", "to_float", "train_transform",
]
