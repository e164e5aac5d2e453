"""Layers and the Module system (PyTorch's torch.nn names)."""
from tinypact.nn import init
from tinypact.nn.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten,
                                Identity, Linear, MaxPool2d, ReLU)
from tinypact.nn.module import Module, Parameter, Sequential

__all__ = ["Module", "Parameter", "Sequential", "Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d",
           "ReLU", "MaxPool2d", "AvgPool2d", "Dropout", "Flatten", "Identity", "init"]
