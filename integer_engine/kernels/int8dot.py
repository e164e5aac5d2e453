"""`int8_tile`: a register tile of an integer GEMM, unsigned 8-bit codes x signed 8-bit weights
-> int32, for the layers where bit-serial popcounts would cost too many passes (the 8-bit first
and last layers; wide layers, `executor.int8_wins`).

    tile[r, c] = sum_k a[m_r, k] * w[n0 + c, k]        a in [0, 255], w in [-128, 127]

The weights are packed once as `wt` (K4, Npad, 4) int8: the four consecutive k of column n are
the 4 bytes of one 32-bit lane, 16 columns side by side in one 512-bit vector. Each step of the
reduction loads two such vectors (32 columns), broadcasts 4 bytes of each of the 8 activation
rows, and adds the four products per lane into 16 int32 vector accumulators:

- with AVX-512 VNNI ("vpdpbusd"): one `vpdpbusd` per row (64 MACs per instruction);
- with AVX2 ("vpmaddubsw", e.g. Zen 1): per 256-bit half, `vpmaddubsw` (u8 x s8, adjacent pairs
  summed to int16) then `vpmaddwd` by ones (int16 pairs to int32) and an add;
- elsewhere ("generic"): the same sums as plain LLVM vector code (zero/sign extension, multiply,
  add of the four byte lanes).

None wraps: each product is at most 255 * 128 in magnitude, and the callers check that
K * 255 * 128 < 2**31 (`INT32_SAFE_K`), so every partial sum is exact in int32. `vpmaddubsw`
saturates its int16 pair sums, so it is exact only when |a0 w0 + a1 w1| <= 2 * a_max * w_max <=
32767 (`pairs_saturate`: e.g. 4-bit layers, 15 * 15, or codes <= 127 against int8 weights). Where
that bound fails (8-bit pixels against 8-bit weights: 2 * 255 * 128 = 65280) the tiles take
`split` = 1: the codes are split as a = (a AND 127) + 128 (a >> 7), both parts within the bound
(2 * 127 * 128 = 32512 and 2 * 1 * 128), each part's pairs widened by `vpmaddwd` (by 1 and by
128) before they are added: twice the instructions, exact.
Under `NUMBA_DISABLE_JIT=1` the names are bound to the plain-Python readings (split changes
nothing there: it only selects an exact instruction sequence).
"""
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from integer_engine.cpu import detect

_LANES = 16
LANES = _LANES  # int32 lanes per weight vector: tiles are 16 * vecs columns wide
# Largest reduction length whose partial sums stay below 2**31: K * 255 * 128 < 2**31.
INT32_SAFE_K = (2**31 - 1) // (255 * 128)
# "vpdpbusd", "vpmaddubsw" or "generic" (`cpu.CPU.int8_dot`); tests may set it before compiling.
LOWERING = detect().int8_dot
VNNI = LOWERING == "vpdpbusd"
# 8 rows x two vectors of 16 int32 lanes: 16 independent accumulators hide vpdpbusd's latency in
# AVX-512's 32 registers. AVX2 has 16 (256-bit) registers: 4 rows x 16 columns (8 of them) leaves
# room for the weights and the int16 intermediates.
TILE_ROWS, TILE_COLS = (8, 32) if VNNI or LOWERING == "generic" else (4, 16)


def pairs_saturate(a_max: int, w_abs_max: int) -> bool:
    """Whether `vpmaddubsw`'s int16 pair sums could saturate for codes <= a_max and weights of
    magnitude <= w_abs_max, i.e. whether the tiles need `split` on this CPU (never off AVX2)."""
    return LOWERING == "vpmaddubsw" and 2 * int(a_max) * int(w_abs_max) > 32767


def _int8_tile_python(a, wt, m0, n0, tile, split=0):
    """Plain reading: tile[r, n0 + c] = sum_k a[min(m0 + r, M - 1), k] * wt[k // 4, n0 + c, k % 4]
    for r < TILE_ROWS, c < TILE_COLS. a: uint8 (M, >= 4 * K4); wt: int8 (K4, Npad, 4); tile: int32
    (TILE_ROWS, >= n0 + TILE_COLS), a row block read once complete (as `popcount.popcount_tile`).
    All C-contiguous."""
    m_last = a.shape[0] - 1
    for r in range(TILE_ROWS):
        m = min(m0 + r, m_last)
        for c in range(TILE_COLS):
            total = 0
            for k in range(4 * wt.shape[0]):  # a's rows may be longer (slack), never shorter
                total += int(a[m, k]) * int(wt[k // 4, n0 + c, k % 4])
            tile[r, n0 + c] = total


def _lane_sums(builder, x, w):
    """Generic <16 x i32> sum over each lane's 4 bytes of zext(x bytes) * sext(w bytes)."""
    bytes64 = ir.VectorType(ir.IntType(8), 64)
    wide = ir.VectorType(ir.IntType(32), 64)
    prod = builder.mul(builder.zext(builder.bitcast(x, bytes64), wide),
                       builder.sext(builder.bitcast(w, bytes64), wide))
    total = None
    for b in range(4):
        part = builder.shuffle_vector(prod, ir.Constant(wide, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), 16), [4 * lane + b for lane in range(16)]))
        total = part if total is None else builder.add(total, part)
    return total


@intrinsic
def _int8_tile_llvm(typingctx, a, wt, m0, n0, tile, split):
    """`_int8_tile_python` in 512-bit vector code (see the module docstring); `split` (0 or 1) a
    compile-time constant."""
    if (a != types.Array(types.uint8, 2, "C") or wt != types.Array(types.int8, 3, "C")
            or tile != types.Array(types.int32, 2, "C") or not isinstance(split, types.IntegerLiteral)):
        return None
    sig = types.void(a, wt, m0, n0, tile, split)

    def codegen(context, builder, signature, args):
        a_arr = context.make_array(signature.args[0])(context, builder, args[0])
        w_arr = context.make_array(signature.args[1])(context, builder, args[1])
        t_arr = context.make_array(signature.args[4])(context, builder, args[4])
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(i32, _LANES)
        n_vecs = TILE_COLS // _LANES
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        m0_v, n0_v = (context.cast(builder, args[p], signature.args[p], types.int64) for p in (2, 3))
        rows = builder.extract_value(a_arr.shape, 0)
        row_bytes = builder.extract_value(a_arr.shape, 1)
        groups = builder.extract_value(w_arr.shape, 0)
        w_cols = builder.extract_value(w_arr.shape, 1)
        step = _dot_step(builder, vec, signature.args[5].literal_value)
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0] * _LANES)) for _ in range(n_vecs)]
                for _ in range(TILE_ROWS)]
        last = builder.sub(rows, const(1))
        row_ptrs = []
        for r in range(TILE_ROWS):
            m = builder.add(m0_v, const(r))
            m = builder.select(builder.icmp_signed("<", m, rows), m, last)
            row_ptrs.append(builder.bitcast(builder.gep(a_arr.data, [builder.mul(m, row_bytes)]), i32.as_pointer()))
        w_words = builder.bitcast(w_arr.data, i32.as_pointer())  # one int32 = a column's 4 bytes
        with cgutils.for_range(builder, groups) as loop:
            g = loop.index
            words = [builder.load(builder.gep(row_ptrs[r], [g]), align=1) for r in range(TILE_ROWS)]
            _accumulate_group(builder, w_words, builder.add(builder.mul(g, w_cols), n0_v), words, accs, step)
        _store_tile(builder, t_arr, accs, n0_v)
        return context.get_dummy_value()

    return sig, codegen


def _int8_conv_tile_python(xp, starts, offsets, wt, n0, tile, split=0, row0=0, rows=TILE_ROWS,
                           vecs=TILE_COLS // _LANES):
    """Plain reading of `int8_conv_tile`: `int8_tile` on patch rows read in place. The k-group t
    (4 bytes) of patch row r starts at byte starts[r] + offsets[t] of xp (1-D uint8) and meets
    weight group t:

        tile[r, n0 + c] = sum_{t, b<4} xp[starts[r] + offsets[t] + b] * wt[t, n0 + c, b]

    for row0 <= r < row0 + rows: TILE_ROWS rows, or 1 for a layer of fewer rows (a single-pixel
    conv at batch 1), which a full tile would compute TILE_ROWS times over; c < 16 * vecs:
    TILE_COLS, or 16 or 48 columns for a layer's last ones (48 outputs, SVHN's first layer, fill
    three vectors exactly where 32-column tiles would compute 64; 48 columns go 4 rows at a time,
    as 8 rows x 3 vectors of accumulators spill out of AVX-512's 32 registers: 4x slower). (A
    conv's offsets: run i of kernel row i at i * row stride, its groups 4 bytes apart,
    `kernels.int8_conv_offsets`.)"""
    for r in range(row0, row0 + rows):
        for c in range(_LANES * vecs):
            total = 0
            for t in range(wt.shape[0]):
                at = starts[r] + offsets[t]
                for b in range(4):
                    total += int(xp[at + b]) * int(wt[t, n0 + c, b])
            tile[r, n0 + c] = total


@intrinsic
def _int8_conv_tile_llvm(typingctx, xp, starts, offsets, wt, n0, tile, split, row0, rows, vecs):
    """`_int8_conv_tile_python` in 512-bit vector code: as `_int8_tile_llvm`, with each row's
    4-byte groups loaded straight from the (NHWC) codes at their offsets instead of a gathered
    patch row (one loop over all groups: a conv's short kernel rows, 16 bytes on SVHN conv0, made
    a nested loop pay its setup every 4 groups); split, rows and vecs (the tile's 16-column weight
    vectors) are compile-time constants."""
    index = types.Array(types.int64, 1, "C")
    if (xp != types.Array(types.uint8, 1, "C") or starts != index or offsets != index
            or wt != types.Array(types.int8, 3, "C") or tile != types.Array(types.int32, 2, "C")
            or not all(isinstance(v, types.IntegerLiteral) for v in (split, rows, vecs))):
        return None
    sig = types.void(xp, starts, offsets, wt, n0, tile, split, row0, rows, vecs)

    def codegen(context, builder, signature, args):
        x_arr = context.make_array(signature.args[0])(context, builder, args[0])
        s_arr = context.make_array(signature.args[1])(context, builder, args[1])
        o_arr = context.make_array(signature.args[2])(context, builder, args[2])
        w_arr = context.make_array(signature.args[3])(context, builder, args[3])
        t_arr = context.make_array(signature.args[5])(context, builder, args[5])
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(i32, _LANES)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        n0_v = context.cast(builder, args[4], signature.args[4], types.int64)
        groups = builder.extract_value(w_arr.shape, 0)
        w_cols = builder.extract_value(w_arr.shape, 1)
        step = _dot_step(builder, vec, signature.args[6].literal_value)
        row0_v = context.cast(builder, args[7], signature.args[7], types.int64)
        n_rows, n_vecs = signature.args[8].literal_value, signature.args[9].literal_value
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0] * _LANES)) for _ in range(n_vecs)]
                for _ in range(n_rows)]
        row_ptrs = [builder.gep(x_arr.data, [builder.load(builder.gep(s_arr.data, [builder.add(row0_v, const(r))]))])
                    for r in range(n_rows)]
        w_words = builder.bitcast(w_arr.data, i32.as_pointer())
        with cgutils.for_range(builder, groups) as loop:
            t = loop.index
            byte = builder.load(builder.gep(o_arr.data, [t]))
            words = [builder.load(builder.bitcast(builder.gep(row_ptrs[r], [byte]), i32.as_pointer()), align=1)
                     for r in range(n_rows)]
            _accumulate_group(builder, w_words, builder.add(builder.mul(t, w_cols), n0_v), words, accs, step)
        _store_tile(builder, t_arr, accs, n0_v, row0_v)
        return context.get_dummy_value()

    return sig, codegen


def _accumulate_group(builder, w_words, at, words, accs, step):
    """One 4-byte group of the reduction: the tile's columns' weights at w_words[at..] (one vector
    of 16 per accs[r][v]), each row's 4 activation bytes `words[r]` broadcast, accs[r][v] += their
    dot products."""
    vec = ir.VectorType(ir.IntType(32), _LANES)
    ws = [builder.load(builder.bitcast(builder.gep(w_words, [builder.add(at, ir.Constant(ir.IntType(64), _LANES * v))]),
                                       vec.as_pointer()), align=4) for v in range(len(accs[0]))]
    splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), _LANES), [0] * _LANES)
    for r, word in enumerate(words):
        x = builder.insert_element(ir.Constant(vec, ir.Undefined), word, ir.Constant(ir.IntType(32), 0))
        x = builder.shuffle_vector(x, ir.Constant(vec, ir.Undefined), splat_mask)
        for v, w in enumerate(ws):
            builder.store(step(builder.load(accs[r][v]), x, w), accs[r][v])


def _store_tile(builder, t_arr, accs, n0_v, row0_v=None):
    """tile[row0 + r, n0 + 16 v ..] = accs[r][v] (row0 0 if None)."""
    vec = ir.VectorType(ir.IntType(32), _LANES)
    i64 = ir.IntType(64)
    t_cols = builder.extract_value(t_arr.shape, 1)
    for r, row in enumerate(accs):
        row_v = ir.Constant(i64, r) if row0_v is None else builder.add(row0_v, ir.Constant(i64, r))
        for v, acc in enumerate(row):
            at = builder.add(builder.add(builder.mul(row_v, t_cols), n0_v), ir.Constant(i64, _LANES * v))
            builder.store(builder.load(acc), builder.bitcast(builder.gep(t_arr.data, [at]), vec.as_pointer()), align=4)


def _dot_step(builder, vec, split=0):
    """acc + the 4-byte dot products of x (u8) and w (s8) per lane, lowered as `LOWERING` says
    (module docstring); `split` for `vpmaddubsw` where its pair sums could saturate."""
    if LOWERING == "vpdpbusd":
        dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             "llvm.x86.avx512.vpdpbusd.512")
        return lambda acc, x, w: builder.call(dot, [acc, x, w])
    if LOWERING == "vpmaddubsw":
        return lambda acc, x, w: builder.add(acc, _maddubs_sums(builder, x, w, split))
    return lambda acc, x, w: builder.add(acc, _lane_sums(builder, x, w))


def _maddubs_sums(builder, x, w, split):
    """<16 x i32> lane sums of zext(x bytes) * sext(w bytes) by AVX2 `vpmaddubsw` + `vpmaddwd`,
    one 256-bit half at a time; with `split` the codes' low 7 bits and top bit separately."""
    i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
    b32, w16, d8 = ir.VectorType(i8, 32), ir.VectorType(i16, 16), ir.VectorType(i32, 8)
    maddubs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(w16, [b32, b32]),
                                             "llvm.x86.avx2.pmadd.ub.sw")
    maddwd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(d8, [w16, w16]),
                                            "llvm.x86.avx2.pmadd.wd")
    ones, by128 = ir.Constant(w16, [1] * 16), ir.Constant(w16, [128] * 16)
    bytes64 = ir.VectorType(i8, 64)
    xb, wb = builder.bitcast(x, bytes64), builder.bitcast(w, bytes64)
    halves = []
    for h in range(2):
        pick = ir.Constant(ir.VectorType(i32, 32), list(range(32 * h, 32 * h + 32)))
        xh = builder.shuffle_vector(xb, ir.Constant(bytes64, ir.Undefined), pick)
        wh = builder.shuffle_vector(wb, ir.Constant(bytes64, ir.Undefined), pick)
        if split:
            low = builder.and_(xh, ir.Constant(b32, [127] * 32))
            top = builder.lshr(xh, ir.Constant(b32, [7] * 32))
            halves.append(builder.add(builder.call(maddwd, [builder.call(maddubs, [low, wh]), ones]),
                                      builder.call(maddwd, [builder.call(maddubs, [top, wh]), by128])))
        else:
            halves.append(builder.call(maddwd, [builder.call(maddubs, [xh, wh]), ones]))
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(i32, 16), list(range(16))))


int8_tile = _int8_tile_python if numba.config.DISABLE_JIT else _int8_tile_llvm
int8_conv_tile = _int8_conv_tile_python if numba.config.DISABLE_JIT else _int8_conv_tile_llvm
