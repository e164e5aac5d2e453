"""What the kernel families share: the threading rule, output-pixel order, window checks.

`_threads_for` runs small work on one thread; `_conv_output_pixel` is the order in which the
fused conv kernels compute their GEMM rows (with or without a fused 2x2 max-pool);
`_check_window` / `_check_conv_codes` validate a conv or pool window on NCHW codes.
"""
import contextlib

import numba
import numpy as np
from numba import njit

from integer_engine.bitpack import check_bits
from integer_engine.errors import EngineError

# Below this many inner-loop operations a kernel runs on one thread: waking the worker threads
# costs more than the work (and, on a busy machine, OpenMP barriers can cost milliseconds).
_PARALLEL_MIN_WORK = 1 << 17

# Blocks of rows per parallel task of the fused kernels: their scratch is allocated once per task.
BLOCKS_PER_TASK = 16
# Placeholder threshold arguments for the non-fused instances of the fused kernels.
_NO_THRESHOLDS = (np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64), np.zeros(1, np.int64))


@contextlib.contextmanager
def _threads_for(work: int):
    """Run the enclosed parallel kernels single-threaded when `work` is too small to split."""
    if work >= _PARALLEL_MIN_WORK or numba.get_num_threads() == 1:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _pooled_size(oh: int, ow: int, pool: int) -> tuple[int, int]:
    if pool not in (1, 2) or (pool == 2 and min(oh, ow) < 2):
        raise EngineError(f"fused max-pool must be 1 (none) or 2 (2x2, stride 2) on at least 2x2, got {pool} "
                          f"on {oh}x{ow}")
    return (oh, ow) if pool == 1 else (oh // 2, ow // 2)


@njit(cache=True, inline="always")
def _conv_output_pixel(m, pool, oh_count, ow_count):  # pragma: no cover - compiled
    """(image, y, x) of the conv output pixel that a fused conv kernel computes as GEMM row m: the
    output pixels in NCHW order (pool == 1), or with a fused 2x2 max-pool (pool == 2) the pooled
    output's windows in NCHW order, each window's 4 pixels in turn (the rest of an odd size
    feeds no window and is never computed)."""
    if pool == 1:
        pixels = oh_count * ow_count
        img = m // pixels
        p = m - img * pixels
        y = p // ow_count
        return img, y, p - y * ow_count
    pw = ow_count // 2
    windows = (oh_count // 2) * pw
    window = m >> 2
    img = window // windows
    q = window - img * windows
    py = q // pw
    return img, 2 * py + ((m >> 1) & 1), 2 * (q - py * pw) + (m & 1)


@njit(cache=True, inline="always")
def _store_rows(block, m0, out):  # pragma: no cover - compiled
    """Rows m0.. of a GEMM result from a block (rows, >= N columns), up to out's last row."""
    for r in range(min(block.shape[0], out.shape[0] - m0)):
        for c in range(out.shape[1]):
            out[m0 + r, c] = block[r, c]


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution/pool window: floor((size + 2p - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_window(x: np.ndarray, kh: int, kw: int, stride: int, padding: int, what: str):
    x = np.asarray(x)
    if x.ndim != 4:
        raise EngineError(f"{what} expects NCHW codes (4-D), got shape {x.shape}")
    if x.dtype.kind not in "iub":
        raise EngineError(f"{what} expects integer codes, got dtype {x.dtype}")
    for name, value, low in (("kernel height", kh, 1), ("kernel width", kw, 1),
                             ("stride", stride, 1), ("padding", padding, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise EngineError(f"{what}: {name} must be an integer >= {low}, got {value!r}")
    _, _, h, w = x.shape
    oh = conv_output_size(h, kh, stride, padding)
    ow = conv_output_size(w, kw, stride, padding)
    if oh < 1 or ow < 1:
        raise EngineError(
            f"{what}: a {kh}x{kw} window with padding {padding} does not fit a {h}x{w} input"
        )
    return x, oh, ow


def _pad_hw(x: np.ndarray, padding: int) -> np.ndarray:
    if padding == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def _check_conv_codes(x, kh, kw, stride, padding, bits, what):
    bits = check_bits(bits)
    x, oh, ow = _check_window(x, kh, kw, stride, padding, what)
    if x.size and (x.min() < 0 or x.max() >= 2**bits):
        raise EngineError(
            f"codes must lie in [0, {2**bits - 1}] for {bits}-bit packing, "
            f"got values in [{x.min()}, {x.max()}]"
        )
    return bits, x, oh, ow
