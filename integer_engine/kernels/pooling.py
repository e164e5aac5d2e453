"""Max-pool on codes (the pools not fused into a conv kernel)."""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from integer_engine.errors import EngineError
from integer_engine.kernels.common import _check_window, _pad_hw

def max_pool_codes(
    x: np.ndarray, kernel: int, stride: int | None = None, padding: int = 0
) -> np.ndarray:
    """Max-pool on non-negative integer codes (N, C, H, W) -> (N, C, OH, OW), same dtype.

    Padding uses 0 where the float model pads with -inf. That is exact: codes come after a
    non-negative activation (clip to [0, alpha]), so every code is >= 0 = the pad value, and with
    padding <= kernel // 2 every window holds at least one real element, whose max is >= 0;
    adding zeros to a set whose max is >= 0 cannot change the max. Both conditions are checked.
    """
    stride = kernel if stride is None else stride
    x, oh, ow = _check_window(x, kernel, kernel, stride, padding, "max_pool_codes")
    if padding > kernel // 2:
        raise EngineError(f"max_pool_codes: padding {padding} exceeds kernel // 2 = {kernel // 2}")
    if x.size and x.min() < 0:
        raise EngineError("max_pool_codes needs non-negative codes (zero padding stands for -inf)")
    windows = sliding_window_view(_pad_hw(x, padding), (kernel, kernel), axis=(2, 3))
    windows = windows[:, :, : oh * stride : stride, : ow * stride : stride]
    return windows.max(axis=(4, 5))
