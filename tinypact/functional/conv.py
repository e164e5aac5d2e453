"""2-D convolution as BLAS matmuls (im2col) over blocks of images, forward beside backward."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tinypact import _kernels, _threads
from tinypact.functional._integer import exact_matmul, integer_operands
from tinypact.functional._layout import pair, to_nchw, to_nhwc
from tinypact.tensor import Tensor


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def l2_cache_bytes(cache_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """The per-core level-2 cache of this CPU in bytes, as Linux reports it; None elsewhere."""
    for index in sorted(Path(cache_dir).glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        number, unit = (size[:-1], units[size[-1]]) if size[-1:] in units else (size, 1)
        if level == "2" and kind != "Instruction" and number.isdigit():
            return int(number) * unit
    return None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Images per block: their im2col rows take at most about twice the CPU's L2 cache, so that the
# matmul reads them from cache right after im2col wrote them (and backward rebuilds them block by
# block instead of keeping every layer's cols: the SVHN step's peak memory fell from 530 to about
# 200 MiB). One thread, train step, medians of interleaved steps:
#   Zen 5 (L2 1 MiB, L3 32 MiB), SVHN: one block for the batch 256 ms, 2 MiB blocks 214,
#     4 MiB 218, 8 MiB 239, 16 MiB 266 (QAT W2A2: 277, 238, 240, 260, 289);
#   Zen 1 (L2 512 KiB, L3 8 MiB shared), ResNet20: 512 KiB 1881 ms, 1 MiB 1940, 2 MiB 2205,
#     4 MiB 2350; SVHN: 1285, 1224, 1278, 1355.
BLOCK_BYTES = 2 * (l2_cache_bytes() or 1 << 20)
# The block count is rounded up to a multiple of the cores (`_image_blocks`), so that every core
# has the same number of blocks: with 16 cores, ResNet20's 8x8x64 layers at batch 128 would
# otherwise make 5 cache-sized blocks and leave 11 cores idle.
CORES = usable_cores()


def _image_blocks(n: int, bytes_per_image: int, cores: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) ranges covering n images: the fewest blocks of at most BLOCK_BYTES of cols
    (at least one image each), their count rounded up to a multiple of `cores` (CORES; at most
    n blocks), the images shared out evenly (sizes differ by at most one, larger first).

    The blocks depend on the shapes and the machine (its L2 cache and cores), never on the
    thread count: the weight gradient sums them in the same order with 1 thread or 16."""
    if n < 1:
        return []
    cores = CORES if cores is None else max(1, cores)
    per_block = max(1, BLOCK_BYTES // max(1, bytes_per_image))
    count = -(-n // per_block)
    count = min(n, cores * -(-count // cores))
    size, larger = divmod(n, count)
    bounds = [0]
    for index in range(count):
        bounds.append(bounds[-1] + size + (index < larger))
    return list(zip(bounds[:-1], bounds[1:]))


def transposed_input_grad(size, out_size, kernel, stride, padding) -> bool:
    """Whether conv2d's input gradient runs as a convolution of the output gradient
    (`_input_grad_transposed`) rather than dcols = g @ W summed back by col2im
    (`_input_grad_col2im`): for stride 1 with at most kernel - 1 padding, when the input has no
    more pixels than the output (so no more multiply-adds: "same" or wider padding).

    Both compute dx[n, y, x, c] = sum_{o,i,j} g[n, y + p - i, x + p - j, o] * w[o, c, i, j]
    (terms outside g are zero); they add the terms in a different order, so dx may differ
    in float rounding. Which one runs depends on the shapes only, never on the threads.
    """
    return (stride == (1, 1) and all(p <= k - 1 for p, k in zip(padding, kernel))
            and size[0] * size[1] <= out_size[0] * out_size[1])


def flipped_weight_matrix(weight: np.ndarray) -> np.ndarray:
    """w_flip[(i, j, o), c] = w[o, c, KH-1-i, KW-1-j]: the weight of the transposed
    convolution as a (KH*KW*O, C) matrix, rows in im2col's column order."""
    out_ch, channels, kernel_h, kernel_w = weight.shape
    return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)).reshape(
        kernel_h * kernel_w * out_ch, channels)


def _input_grad_col2im(g: np.ndarray, w_mat: np.ndarray, kernel, stride, padding,
                       grad: np.ndarray) -> None:
    """dx of a block of images, the plain reading: dcols = g @ W (N*OH*OW, KH*KW*C), each
    window's gradient added back where it was read (col2im). g: (N, OH, OW, O), w_mat:
    (O, KH*KW*C), grad: (N, H, W, C), overwritten."""
    n, out_h, out_w, out_ch = g.shape
    dcols = g.reshape(-1, out_ch) @ w_mat
    _kernels.col2im_nhwc(dcols.reshape(n, out_h, out_w, kernel[0], kernel[1], grad.shape[3]),
                         stride[0], stride[1], padding[0], padding[1], grad)


def _input_grad_transposed(g: np.ndarray, w_flipped: np.ndarray, kernel_h: int, kernel_w: int,
                           pad_h: int, pad_w: int, grad: np.ndarray) -> None:
    """dx of a block of images (stride 1) as the convolution of g (N, OH, OW, O) with the
    flipped, transposed weight (`flipped_weight_matrix`) and padding KH-1-p, KW-1-p: im2col of g,
    one matmul into grad (N, H, W, C), overwritten. Reads g's windows instead of writing the
    (N*OH*OW, KH*KW*C) dcols and scattering them back: one pass less over the biggest array."""
    n, out_h, out_w, out_ch = g.shape
    cols = np.empty((n, grad.shape[1], grad.shape[2], kernel_h, kernel_w, out_ch), dtype=g.dtype)
    _kernels.im2col_nhwc(g, 1, 1, kernel_h - 1 - pad_h, kernel_w - 1 - pad_w, cols)
    np.matmul(cols.reshape(-1, w_flipped.shape[0]), w_flipped,
              out=grad.reshape(-1, grad.shape[3]))


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,  # noqa: A002
           padding=0) -> Tensor:
    """Cross-correlation (PyTorch's conv2d), NCHW input (N, C, H, W), weight (O, C, KH, KW).

        out[n, o, y, x] = b[o] + sum_{c,i,j} w[o, c, i, j] * xpad[n, c, y*s + i, x*s + j]

    Lowered to matmuls: the windows of the NHWC input (zero outside it) become the rows of
    cols (N*OH*OW, KH*KW*C) and out = cols @ W^T with W reshaped to (O, KH*KW*C).
    Backward:  dW = (cols^T @ g)^T,  db = sum g,  and dx either as dcols = g @ W summed back
    (col2im) or, for stride 1 with "same" padding, as the convolution of g with the flipped
    weight (`transposed_input_grad` says which).
    Both run over cache-sized blocks of images (BLOCK_BYTES of cols each; dW sums the blocks);
    backward rebuilds each block's cols rather than keeping the whole batch's.

    Quantized operands (input and weight both carry `Codes`, see functional/_integer.py): the
    matmul multiplies the integers, out = (q_cols @ c^T) * (s_a * s_w) + b, exact up to the one
    float32 rounding of each step; the gradients are the same formulas (cols = q_cols * s_a).
    """
    x = input.data
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d expects a 4-D input and weight, got {x.shape} and {weight.shape}")
    n, c, h, w = x.shape
    out_ch, c_w, kernel_h, kernel_w = weight.shape
    if c != c_w:
        raise ValueError(f"conv2d: input has {c} channels but the weight expects {c_w}")
    stride_h, stride_w = pair(stride, "stride")
    pad_h, pad_w = pair(padding, "padding")
    out_h = conv_output_size(h, kernel_h, stride_h, pad_h)
    out_w = conv_output_size(w, kernel_w, stride_w, pad_w)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv2d: kernel {kernel_h}x{kernel_w} larger than the padded input "
                         f"{h + 2 * pad_h}x{w + 2 * pad_w}")

    integer = integer_operands(input, weight, c * kernel_h * kernel_w)
    source = to_nhwc(x if integer is None else integer[0])
    pixels = out_h * out_w  # rows of cols per image
    window = kernel_h * kernel_w * c
    blocks = _image_blocks(n, pixels * window * x.dtype.itemsize)

    def im2col(start: int, stop: int) -> np.ndarray:
        """cols of images start..stop-1: (images * OH * OW, KH*KW*C)."""
        cols = np.empty((stop - start, out_h, out_w, kernel_h, kernel_w, c), dtype=x.dtype)
        _kernels.im2col_nhwc(source[start:stop], stride_h, stride_w, pad_h, pad_w, cols)
        return cols.reshape(-1, window)

    w_mat = weight.data.transpose(0, 2, 3, 1).reshape(out_ch, -1)  # (O, KH*KW*C), small copy
    if integer is None:
        w_cols, dtype, scale, cols_scale = w_mat.T, None, None, None
    else:
        _, levels, scale, dtype = integer
        w_cols = levels.transpose(0, 2, 3, 1).reshape(out_ch, -1).T
        cols_scale = input.codes.scale  # cols holds codes: the input's values are cols * scale
    out = np.empty((n * pixels, out_ch), dtype=x.dtype)

    def forward_block(block: tuple[int, int]) -> np.ndarray | None:
        """Writes this block's rows of out; returns its cols if it is the only block."""
        start, stop = block
        cols = im2col(start, stop)
        rows = out[start * pixels:stop * pixels]
        if integer is None:
            np.matmul(cols, w_cols, out=rows)
        else:
            rows[...] = exact_matmul(cols, w_cols, dtype)
            rows *= scale
        return cols if len(blocks) == 1 else None  # one block: backward reuses it

    kept_cols = _threads.map_blocks(forward_block, blocks)[0]
    if bias is not None:
        _kernels.add_row(out, bias.data)
    out_nchw = to_nchw(out.reshape(n, out_h, out_w, out_ch))

    def backward(g):
        g_rows = to_nhwc(g).reshape(n * pixels, out_ch)
        grad_x = grad_w = grad_b = None
        grad_nhwc = np.empty((n, h, w, c), dtype=x.dtype) if input.requires_grad else None
        w_flipped = None
        if grad_nhwc is not None and transposed_input_grad(
                (h, w), (out_h, out_w), (kernel_h, kernel_w), (stride_h, stride_w), (pad_h, pad_w)):
            w_flipped = flipped_weight_matrix(weight.data)

        def backward_block(block: tuple[int, int]) -> np.ndarray | None:
            """This block's share of cols^T @ g; its dx goes straight into grad_nhwc."""
            start, stop = block
            cols = kept_cols if kept_cols is not None else im2col(start, stop)
            g_block = g_rows[start * pixels:stop * pixels]
            if grad_nhwc is not None:
                g_images = g_block.reshape(stop - start, out_h, out_w, out_ch)
                if w_flipped is not None:
                    _input_grad_transposed(g_images, w_flipped, kernel_h, kernel_w, pad_h, pad_w,
                                           grad_nhwc[start:stop])
                else:
                    _input_grad_col2im(g_images, w_mat, (kernel_h, kernel_w),
                                       (stride_h, stride_w), (pad_h, pad_w), grad_nhwc[start:stop])
            # cols^T @ g, not g^T @ cols: NumPy's BLAS call is several times faster this way
            return cols.T @ g_block if weight.requires_grad else None

        shares = _threads.map_blocks(backward_block, blocks)
        if weight.requires_grad:
            grad_cols = shares[0]
            for share in shares[1:]:  # in block order, whichever thread computed them
                grad_cols += share
            if cols_scale is not None:
                grad_cols *= cols_scale
            grad_w = np.empty(weight.shape, dtype=grad_cols.dtype)
            _kernels.weight_grad_to_oihw(grad_cols, grad_w)
        if bias is not None and bias.requires_grad:
            sums = _kernels.column_sums(g_rows, _kernels.row_chunks(n * pixels))
            grad_b = sums.astype(g_rows.dtype)
        if grad_nhwc is not None:
            grad_x = to_nchw(grad_nhwc)
        return (grad_x, grad_w) if bias is None else (grad_x, grad_w, grad_b)

    parents = (input, weight) if bias is None else (input, weight, bias)
    return Tensor.from_op(out_nchw, parents, backward, "conv2d")
