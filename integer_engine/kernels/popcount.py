"""Population counts for the Numba kernels: `popcount64` (one word) and `popcount_tile` (a register
tile of a bit-serial GEMM in 512-bit vectors).

Numba 0.68 cannot compile `np.bitwise_count` or `int.bit_count()` in nopython mode, so both are
small `numba.extending.intrinsic`s whose code generation is chosen by `cpu.detect().popcount`:

- "popcnt" (x86-64 with POPCNT but no AVX-512 VPOPCNTDQ, e.g. Zen 1): `popcount64` is the `popcnt`
  instruction as inline assembly. With LLVM's `ctpop` the loop vectoriser rewrote the kernels'
  popcount loops into AVX2 byte lookups (vpshufb), which on Zen 1 made the W2A2 GEMM about 1.6x
  slower (25-35 vs 58-65 GMAC/s on the SVHN conv shapes); inline assembly is opaque to it.
- "vpopcntq" (VPOPCNTDQ, e.g. Zen 4/5): plain `ctpop`, never the inline assembly, which would keep
  LLVM from using `vpopcntq`; the GEMM itself runs `popcount_tile`, written directly as 512-bit
  vector IR so that nothing depends on the vectoriser's mood.
- "ctpop" elsewhere.

Under `NUMBA_DISABLE_JIT=1` kernels run as plain Python and an intrinsic cannot be called from
Python, so the same names are bound to the pure-Python readings below instead; the tests run
both against NumPy.
"""
import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from integer_engine.cpu import detect

# popcount_tile's register tile: 4 activation rows x TILE_COLS weight columns in vectors of 8 uint64
# accumulators. Each loaded weight vector serves 4 rows, each broadcast activation word every column.
# 16 columns (8 vectors) fill AVX-512's 32 registers well; on AVX2 (16 registers of 4 uint64) they
# spill, and 8 columns ran the fused SVHN convs 10-15% faster on Zen 1 (W1A1, batch 1 and 512).
TILE_ROWS = 4
_LANES = 8  # uint64 lanes in a 512-bit vector

POPCOUNT = detect().popcount
TILE_COLS = 16 if POPCOUNT == "vpopcntq" else 8
SCALAR_POPCNT_ASM = POPCOUNT == "popcnt"
if SCALAR_POPCNT_ASM:
    llvm.initialize_native_asmparser()  # Numba does not; LLVM needs it to emit inline assembly


def _popcount64_python(x: np.uint64) -> np.uint64:
    """Pure-Python popcount (used when Numba's JIT is disabled)."""
    return np.uint64(int(x).bit_count())


@intrinsic
def _popcount64_llvm(typingctx, x):
    """Population count of a uint64 (any integer argument is reinterpreted as uint64)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(x)

    def codegen(context, builder, signature, args):
        (value,) = args
        # Widen/reinterpret to 64 bits first so every integer type gets a 64-bit count.
        value = context.cast(builder, value, signature.args[0], types.uint64)
        if SCALAR_POPCNT_ASM:
            i64 = ir.IntType(64)
            return builder.asm(ir.FunctionType(i64, [i64]), "popcntq $1, $0", "=r,r", [value],
                               side_effect=False)
        return builder.ctpop(value)

    return sig, codegen


def _popcount_tile_python(a, wt, i0, j0, m0, n0, tile, abits, wbits):
    """Plain reading of `popcount_tile`: for r < TILE_ROWS, c < TILE_COLS,

        tile[r, n0+c] = sum_k sum_{i<abits, j<wbits} 2^(i+j) popcount(a[i0+i, m_r, k] AND wt[j0+j, k, n0+c])

    with m_r = min(m0 + r, M - 1) (rows past the end repeat the last one). a: uint64 (planes, M, KW)
    activation planes; wt: uint64 (planes, KW, Npad) weight planes transposed (word k of column n
    at wt[j, k, n]), Npad >= n0 + TILE_COLS; tile: uint64 (TILE_ROWS, >= n0 + TILE_COLS), a row
    block of results that the caller reads once every column tile is in (reading a 512-bit store
    back at once with narrower loads stalls store forwarding). All C-contiguous."""
    m_last = a.shape[1] - 1
    for r in range(TILE_ROWS):
        m = min(m0 + r, m_last)
        for c in range(TILE_COLS):
            total = 0
            for k in range(a.shape[2]):
                for i in range(abits):
                    for j in range(wbits):
                        total += int(a[i0 + i, m, k] & wt[j0 + j, k, n0 + c]).bit_count() << (i + j)
            tile[r, n0 + c] = total


@intrinsic
def _popcount_tile_llvm(typingctx, a, wt, i0, j0, m0, n0, tile, abits, wbits):
    """`_popcount_tile_python` as 512-bit vector code: per word k, TILE_COLS weight columns are
    TILE_COLS / 8 vector loads, each activation word one broadcast, and every (plane pair, row,
    vector) an AND, a `ctpop` of <8 x i64> (`vpopcntq` with VPOPCNTDQ; on AVX2, LLVM's nibble
    lookups), a shift by i + j and an add into one of the vector accumulators held in registers. abits and wbits must be compile-time constants."""
    if not (isinstance(abits, types.IntegerLiteral) and isinstance(wbits, types.IntegerLiteral)):
        return None
    planes = types.Array(types.uint64, 3, "C")
    if a != planes or wt != planes or tile != types.Array(types.uint64, 2, "C"):
        return None
    n_abits, n_wbits = abits.literal_value, wbits.literal_value
    sig = types.void(a, wt, i0, j0, m0, n0, tile, abits, wbits)

    def codegen(context, builder, signature, args):
        a_arr = context.make_array(signature.args[0])(context, builder, args[0])
        w_arr = context.make_array(signature.args[1])(context, builder, args[1])
        t_arr = context.make_array(signature.args[6])(context, builder, args[6])
        i64 = ir.IntType(64)
        vec = ir.VectorType(i64, _LANES)
        i0_v, j0_v, m0_v, n0_v = (context.cast(builder, args[p], signature.args[p], types.int64)
                                  for p in range(2, 6))
        rows = builder.extract_value(a_arr.shape, 1)
        words = builder.extract_value(a_arr.shape, 2)
        w_cols = builder.extract_value(w_arr.shape, 2)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        n_vecs = TILE_COLS // _LANES
        # Accumulators as allocas in the entry block: LLVM promotes them to registers.
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0] * _LANES)) for _ in range(n_vecs)]
                for _ in range(TILE_ROWS)]
        last = builder.sub(rows, const(1))
        row_of = []
        for r in range(TILE_ROWS):
            m = builder.add(m0_v, const(r))
            row_of.append(builder.select(builder.icmp_signed("<", m, rows), m, last))
        with cgutils.for_range(builder, words) as loop:
            k = loop.index
            w_vecs = []
            for j in range(n_wbits):
                plane = builder.add(j0_v, const(j))
                first = builder.add(builder.mul(builder.add(builder.mul(plane, words), k), w_cols), n0_v)
                w_vecs.append([builder.load(builder.bitcast(builder.gep(w_arr.data, [builder.add(first, const(_LANES * v))]),
                                                            vec.as_pointer()), align=8)
                               for v in range(n_vecs)])
            for r in range(TILE_ROWS):
                words_r = []
                for i in range(n_abits):
                    plane = builder.add(i0_v, const(i))
                    at = builder.add(builder.mul(builder.add(builder.mul(plane, rows), row_of[r]), words), k)
                    words_r.append(builder.load(builder.gep(a_arr.data, [at])))
                _accumulate_row(builder, words_r, w_vecs, accs[r])
        _store_accs(builder, t_arr, accs, n0_v)
        return context.get_dummy_value()

    return sig, codegen


def _accumulate_row(builder, words, w_vecs, row_accs):
    """One word k of one tile row: each plane i's activation word `words[i]` broadcast, and for
    every weight plane j and vector v, row_accs[v] += ctpop(x_i AND w_vecs[j][v]) << (i + j)."""
    vec = ir.VectorType(ir.IntType(64), _LANES)
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]), f"llvm.ctpop.v{_LANES}i64")
    splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), _LANES), [0] * _LANES)
    x_vecs = [builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), word,
                                                            ir.Constant(ir.IntType(32), 0)),
                                     ir.Constant(vec, ir.Undefined), splat_mask) for word in words]
    for v, slot in enumerate(row_accs):
        acc = builder.load(slot)
        for i, x in enumerate(x_vecs):
            for j, w in enumerate(w_vecs):
                count = builder.call(ctpop, [builder.and_(x, w[v])])
                if i + j:
                    count = builder.shl(count, ir.Constant(vec, [i + j] * _LANES))
                acc = builder.add(acc, count)
        builder.store(acc, slot)


def _store_accs(builder, t_arr, accs, n0_v):
    """tile[r, n0 + 8 v ..] = accs[r][v] (8 uint64 lanes per vector)."""
    vec = ir.VectorType(ir.IntType(64), _LANES)
    i64 = ir.IntType(64)
    t_cols = builder.extract_value(t_arr.shape, 1)
    for r, row in enumerate(accs):
        for v, slot in enumerate(row):
            at = builder.gep(t_arr.data, [builder.add(builder.add(builder.mul(ir.Constant(i64, r), t_cols), n0_v),
                                                      ir.Constant(i64, _LANES * v))])
            builder.store(builder.load(slot), builder.bitcast(at, vec.as_pointer()), align=8)


def _popcount_conv_tile_python(src, starts, offsets, plane_words, wt, n0, tile, abits, wbits):
    """Plain reading of `popcount_conv_tile`: `popcount_tile` on conv patch rows read in place from
    channel-packed bit-planes `src` (uint64, 1-D; plane i starts at word i * plane_words). Word k
    of row r's patch in plane i is src[i * plane_words + starts[r] + offsets[k]]:

        tile[r, n0+c] = sum_k sum_{i<abits, j<wbits} 2^(i+j) popcount(src[...] AND wt[j, k, n0+c])

    for r < TILE_ROWS, c < TILE_COLS, k < wt.shape[1]. (A conv's offsets: word u of kernel row i at
    i * row words + u, `kernels.conv_word_offsets`.)"""
    for r in range(TILE_ROWS):
        for c in range(TILE_COLS):
            total = 0
            for k in range(wt.shape[1]):
                for i in range(abits):
                    word = int(src[i * plane_words + starts[r] + offsets[k]])
                    for j in range(wbits):
                        total += (word & int(wt[j, k, n0 + c])).bit_count() << (i + j)
            tile[r, n0 + c] = total


@intrinsic
def _popcount_conv_tile_llvm(typingctx, src, starts, offsets, plane_words, wt, n0, tile, abits, wbits):
    """`_popcount_conv_tile_python` as 512-bit vector code: `_popcount_tile_llvm` with each row's
    activation word loaded from the packed planes at its offset instead of a gathered row (the
    bit-serial conv kernel had copied every block's patch rows into a buffer first: about 1.6 of
    SVHN conv1's 7.3 ms at W1A1 on one thread). abits and wbits are compile-time constants."""
    if not (isinstance(abits, types.IntegerLiteral) and isinstance(wbits, types.IntegerLiteral)):
        return None
    index = types.Array(types.int64, 1, "C")
    if (src != types.Array(types.uint64, 1, "C") or starts != index or offsets != index
            or wt != types.Array(types.uint64, 3, "C") or tile != types.Array(types.uint64, 2, "C")):
        return None
    n_abits, n_wbits = abits.literal_value, wbits.literal_value
    sig = types.void(src, starts, offsets, plane_words, wt, n0, tile, abits, wbits)

    def codegen(context, builder, signature, args):
        s_arr = context.make_array(signature.args[0])(context, builder, args[0])
        st_arr = context.make_array(signature.args[1])(context, builder, args[1])
        o_arr = context.make_array(signature.args[2])(context, builder, args[2])
        w_arr = context.make_array(signature.args[4])(context, builder, args[4])
        t_arr = context.make_array(signature.args[6])(context, builder, args[6])
        i64 = ir.IntType(64)
        vec = ir.VectorType(i64, _LANES)
        plane_v = context.cast(builder, args[3], signature.args[3], types.int64)
        n0_v = context.cast(builder, args[5], signature.args[5], types.int64)
        words = builder.extract_value(w_arr.shape, 1)
        w_cols = builder.extract_value(w_arr.shape, 2)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        n_vecs = TILE_COLS // _LANES
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0] * _LANES)) for _ in range(n_vecs)]
                for _ in range(TILE_ROWS)]
        row_start = [builder.load(builder.gep(st_arr.data, [const(r)])) for r in range(TILE_ROWS)]
        with cgutils.for_range(builder, words) as loop:
            k = loop.index
            offset = builder.load(builder.gep(o_arr.data, [k]))
            w_vecs = []
            for j in range(n_wbits):
                first = builder.add(builder.mul(builder.add(builder.mul(const(j), words), k), w_cols), n0_v)
                w_vecs.append([builder.load(builder.bitcast(builder.gep(w_arr.data, [builder.add(first, const(_LANES * v))]),
                                                            vec.as_pointer()), align=8)
                               for v in range(n_vecs)])
            for r in range(TILE_ROWS):
                words_r = [builder.load(builder.gep(s_arr.data, [
                    builder.add(builder.add(builder.mul(const(i), plane_v), row_start[r]), offset)]))
                    for i in range(n_abits)]
                _accumulate_row(builder, words_r, w_vecs, accs[r])
        _store_accs(builder, t_arr, accs, n0_v)
        return context.get_dummy_value()

    return sig, codegen


popcount64 = _popcount64_python if numba.config.DISABLE_JIT else _popcount64_llvm
popcount_tile = _popcount_tile_python if numba.config.DISABLE_JIT else _popcount_tile_llvm
popcount_conv_tile = _popcount_conv_tile_python if numba.config.DISABLE_JIT else _popcount_conv_tile_llvm
