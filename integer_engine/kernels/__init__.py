"""Integer kernels of the engine, one module per family, each fast kernel beside its plain reading:

- `popcount`, `int8dot`, `floatdot`: the tile intrinsics (LLVM vector code chosen by the CPU), each with the
  plain-Python reading it must equal (`_popcount_tile_python`, `_int8_tile_python`, ...);
- `packing`: operand layouts made once (transposed weight planes, int8 lanes, channel packing);
- `im2col`: convolution lowering on codes and the indirection tables of the in-place conv tiles;
- `bitserial`: popcount GEMMs and convs on bit-planes, plain and fused with the thresholds;
- `int8`: u8 x s8 GEMMs and convs, the same convs on the exact float32 tile (`floatdot`), and
  the exact float-BLAS `int_gemm`;
- `pooling`: max-pool on codes; `layout`: the conv kernels' output layouts (`LaidOut`);
- `select`: which family and compiled variant a layer gets on this CPU;
- `common`: threading rule, output-pixel order, window checks.

Conventions (all kernels):
- A GEMM multiplies activations `a` of shape (M, K) by weights `w` of shape (N, K) and returns
  `a @ w.T` as int64 (M, N): rows of `w` are output channels, as in `weight.reshape(O, -1)`.
- Bit-serial kernels take the uint64 planes of `integer_engine.bitpack.bit_planes`:
  activations (abits, M, ceil(K/64)), weights (wbits, N, ceil(K/64)), both zero-padded past K.
- Activation codes are unsigned (PACT/ReLU outputs after a non-negative clip).

Numba's disk cache (`cache=True`) keys a kernel by its own file only, but the kernels compile in
code from other files: popcount.py, int8dot.py, common.py (`_conv_output_pixel`, `_store_rows`),
im2col.py (`_conv_row_starts`), bitpack.py and requant.py (`threshold_block`, `window_codes`,
`store_codes`). After editing one of those, touch bitserial.py and int8.py or clear
integer_engine/kernels/__pycache__, or a cached kernel keeps the old code.

The names below are the package's interface; the engine imports them from here.
"""
from integer_engine.bitpack import MAX_BITS
from integer_engine.kernels.bitserial import (affine_weight_gemm, bitserial_conv_call, bitserial_conv_threshold_codes,
                                              bitserial_gemm,
                                              bitserial_gemm_transposed, bitserial_threshold_codes, odd_weight_gemm,
                                              plane_row_sums)
from integer_engine.kernels.common import conv_output_size
from integer_engine.kernels.floatdot import FLOAT32_EXACT, float32_exact
from integer_engine.kernels.im2col import (conv_bit_planes, conv_channel_planes, conv_word_offsets, im2col_codes,
                                           int8_conv_offsets)
from integer_engine.kernels.int8 import (int8_conv_call, int8_conv_threshold_codes, int8_gemm, int8_gemm_call,
                                         int8_threshold_codes, int_gemm, patch_sums)
from integer_engine.kernels.layout import LaidOut, as_codes, conv_output
from integer_engine.kernels.packing import (channel_major_weights, channel_packed_planes, float_conv_weights,
                                            int8_conv_weights, int8_weights, transposed_planes)
from integer_engine.kernels.pooling import max_pool_codes
from integer_engine.kernels.select import BITSERIAL_KERNEL, SPECIALISED_PAIRS

__all__ = [
    "MAX_BITS",
    "BITSERIAL_KERNEL",
    "SPECIALISED_PAIRS",
    "LaidOut",
    "as_codes",
    "conv_output",
    "affine_weight_gemm",
    "bitserial_gemm",
    "bitserial_conv_call",
    "bitserial_conv_threshold_codes",
    "bitserial_gemm_transposed",
    "bitserial_threshold_codes",
    "transposed_planes",
    "channel_major_weights",
    "channel_packed_planes",
    "conv_bit_planes",
    "conv_channel_planes",
    "conv_output_size",
    "conv_word_offsets",
    "im2col_codes",
    "int8_conv_offsets",
    "int8_conv_call",
    "int8_conv_threshold_codes",
    "int8_conv_weights",
    "int8_gemm",
    "int8_gemm_call",
    "int8_threshold_codes",
    "int8_weights",
    "float_conv_weights",
    "FLOAT32_EXACT",
    "float32_exact",
    "int_gemm",
    "max_pool_codes",
    "odd_weight_gemm",
    "patch_sums",
    "plane_row_sums",
]
