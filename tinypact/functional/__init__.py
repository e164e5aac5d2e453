"""Functional ops (PyTorch's torch.nn.functional names, NCHW layout), forward beside backward.

basic.py          linear, relu, dropout, pad, flatten
conv.py           conv2d (im2col + one matmul)
pooling.py        max_pool2d, avg_pool2d, global_avg_pool2d
normalization.py  batch_norm
losses.py         log_softmax, cross_entropy
"""
from tinypact.functional.basic import dropout, flatten, linear, pad, relu
from tinypact.functional.conv import conv2d, conv_output_size
from tinypact.functional.losses import cross_entropy, log_softmax
from tinypact.functional.normalization import batch_norm
from tinypact.functional.pooling import avg_pool2d, global_avg_pool2d, max_pool2d, pool_output_size

__all__ = ["linear", "relu", "dropout", "pad", "flatten", "conv2d", "conv_output_size",
           "max_pool2d", "avg_pool2d", "global_avg_pool2d", "pool_output_size", "batch_norm",
           "log_softmax", "cross_entropy"]
