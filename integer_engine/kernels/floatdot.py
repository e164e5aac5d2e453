"""The exact float32 tile: integer dot products computed with float32 fused multiply-adds.

A conv's patch rows are read in place from its zero-padded NHWC codes held as float32 (`xp`),
against float32 weights in the conv's reduction order (`packing.float_conv_weights`: the int8
conv's 4-element groups, (groups, 4, Npad)). Per element of the reduction, each row's code is
broadcast and multiplied into 16-column weight vectors by `llvm.fma` (AVX2 `vfmadd231ps`, 8 lanes
per instruction; two FMA pipes on Zen 1), the accumulators held in registers.

Exact by construction, not by luck: codes and weights are integers, every product and every
partial sum (in any order, fused or not) is an integer of magnitude at most the layer's acc_bound,
and float32 represents every integer up to FLOAT32_EXACT = 2**24, so no step ever rounds when
acc_bound <= FLOAT32_EXACT (`float32_exact`, the rule `int8.int_gemm` and the executor use
too). The tile converts its sums to int32 for the integer thresholds. On AVX2 CPUs without VNNI
this beats the int8 tile's split `vpmaddubsw` sequence that 8-bit codes x 8-bit weights need
(`int8dot.pairs_saturate`): `kernels.select.float32_conv`. Under `NUMBA_DISABLE_JIT=1` the
name is bound to the plain-Python reading.
"""
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_LANES = 16  # float32 columns per weight vector (two 256-bit registers on AVX2)
# float32 represents every integer of magnitude <= 2**24 (a 24-bit significand); 2**24 + 1 rounds.
FLOAT32_EXACT = 2**24


def float32_exact(bound: int) -> bool:
    """Whether an integer GEMM whose every product and partial sum has magnitude <= `bound` is
    exact in float32, in any order of summation, with or without fused multiply-adds: the rule of
    this tile, of `int8.int_gemm` and of the executor's float GEMMs."""
    return int(bound) <= FLOAT32_EXACT


def _float_conv_tile_python(xp, starts, offsets, wt, n0, tile, split=0, row0=0, rows=4, vecs=1):
    """Plain reading of `float_conv_tile` (the signature of `int8dot.int8_conv_tile`; `split` is
    unused): group t (4 elements) of patch row r starts at element starts[r] + offsets[t] of xp
    (1-D float32 codes) and meets the weights wt[t] (float32 (groups, 4, Npad)):

        tile[r, n0 + c] = sum_{t, b<4} xp[starts[r] + offsets[t] + b] * wt[t, b, n0 + c]

    for row0 <= r < row0 + rows and c < 16 * vecs; tile is int32."""
    for r in range(row0, row0 + rows):
        for c in range(_LANES * vecs):
            total = 0
            for t in range(wt.shape[0]):
                at = starts[r] + offsets[t]
                for b in range(4):
                    total += int(xp[at + b]) * int(wt[t, b, n0 + c])
            tile[r, n0 + c] = total


@intrinsic
def _float_conv_tile_llvm(typingctx, xp, starts, offsets, wt, n0, tile, split, row0, rows, vecs):
    """`_float_conv_tile_python` in vector code: rows x vecs accumulators of 16 float32 lanes,
    per reduction element one broadcast code per row and one `llvm.fma` per accumulator; the sums
    converted to int32 (exact: integers below 2**24) at the end. rows and vecs are compile-time
    constants."""
    index = types.Array(types.int64, 1, "C")
    if (xp != types.Array(types.float32, 1, "C") or starts != index or offsets != index
            or wt != types.Array(types.float32, 3, "C") or tile != types.Array(types.int32, 2, "C")
            or not all(isinstance(v, types.IntegerLiteral) for v in (rows, vecs))):
        return None
    sig = types.void(xp, starts, offsets, wt, n0, tile, split, row0, rows, vecs)

    def codegen(context, builder, signature, args):
        x_arr = context.make_array(signature.args[0])(context, builder, args[0])
        s_arr = context.make_array(signature.args[1])(context, builder, args[1])
        o_arr = context.make_array(signature.args[2])(context, builder, args[2])
        w_arr = context.make_array(signature.args[3])(context, builder, args[3])
        t_arr = context.make_array(signature.args[5])(context, builder, args[5])
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(f32, _LANES)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             "llvm.fma.v16f32")
        n0_v = context.cast(builder, args[4], signature.args[4], types.int64)
        row0_v = context.cast(builder, args[7], signature.args[7], types.int64)
        n_rows, n_vecs = signature.args[8].literal_value, signature.args[9].literal_value
        groups = builder.extract_value(w_arr.shape, 0)
        w_cols = builder.extract_value(w_arr.shape, 2)
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * _LANES)) for _ in range(n_vecs)]
                for _ in range(n_rows)]
        row_ptrs = [builder.gep(x_arr.data, [builder.load(builder.gep(s_arr.data, [builder.add(row0_v, const(r))]))])
                    for r in range(n_rows)]
        splat = ir.Constant(ir.VectorType(i32, _LANES), [0] * _LANES)
        with cgutils.for_range(builder, groups) as loop:
            t = loop.index
            at = builder.load(builder.gep(o_arr.data, [t]))
            for b in range(4):
                w_row = builder.add(builder.mul(builder.add(builder.mul(t, const(4)), const(b)), w_cols), n0_v)
                ws = [builder.load(builder.bitcast(builder.gep(w_arr.data, [builder.add(w_row, const(_LANES * v))]),
                                                   vec.as_pointer()), align=4) for v in range(n_vecs)]
                for r in range(n_rows):
                    x = builder.load(builder.gep(row_ptrs[r], [builder.add(at, const(b))]))
                    x = builder.insert_element(ir.Constant(vec, ir.Undefined), x, ir.Constant(i32, 0))
                    x = builder.shuffle_vector(x, ir.Constant(vec, ir.Undefined), splat)
                    for v, w in enumerate(ws):
                        builder.store(builder.call(fma, [x, w, builder.load(accs[r][v])]), accs[r][v])
        ivec = ir.VectorType(i32, _LANES)
        t_cols = builder.extract_value(t_arr.shape, 1)
        for r, row in enumerate(accs):
            row_at = builder.mul(builder.add(row0_v, const(r)), t_cols)
            for v, acc in enumerate(row):
                at = builder.add(builder.add(row_at, n0_v), const(_LANES * v))
                builder.store(builder.fptosi(builder.load(acc), ivec),
                              builder.bitcast(builder.gep(t_arr.data, [at]), ivec.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


float_conv_tile = _float_conv_tile_python if numba.config.DISABLE_JIT else _float_conv_tile_llvm
