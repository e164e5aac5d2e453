"""Image ops against plain nested-loop references (tests/op_registry.py) over random shapes,
strides and paddings; batch-norm train/eval semantics; the NHWC-backed layout; Numba kernels."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from op_registry import (avg_pool2d_reference, batch_norm_reference, conv2d_reference,
                         max_pool2d_reference)
from tinypact import Tensor, _kernels, ops
from tinypact import functional as F


@st.composite
def conv_problem(draw):
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    k = draw(st.integers(1, 5))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 3))
    h, w = draw(st.integers(max(1, k - 2 * padding), 9)), draw(st.integers(max(1, k - 2 * padding), 9))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    bias = rng.standard_normal(o) if draw(st.booleans()) else None
    return (rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, k, k)), bias, stride,
            padding)


@given(conv_problem())
def test_conv2d_matches_nested_loops(problem):
    x, w, b, stride, padding = problem
    got = F.conv2d(Tensor(x), Tensor(w), None if b is None else Tensor(b), stride, padding).data
    expected = conv2d_reference(x, w, b, stride, padding)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10, err_msg=(
        f"conv2d x{x.shape} w{w.shape} stride {stride} padding {padding}"))


@settings(max_examples=40, deadline=None)
@given(conv_problem(), st.integers(1, 3), st.booleans())
def test_conv2d_in_image_blocks_equals_one_block(problem, images_per_block, quantized):
    """Forward and all three gradients with blocks of 1-3 images (backward rebuilding each
    block's cols) against one block of the whole batch; quantized operands (integer codes)
    give bit-equal outputs either way."""
    from tinypact.functional import conv as conv_module
    from tinypact.quant import functional as Q

    x, w, b, stride, padding = problem
    rng = np.random.default_rng(0)

    def run(block_bytes):
        saved = conv_module.BLOCK_BYTES, conv_module.CORES
        conv_module.BLOCK_BYTES, conv_module.CORES = block_bytes, 1
        try:
            xt = Tensor(x.astype(np.float32), requires_grad=True)
            wt = Tensor(w.astype(np.float32), requires_grad=True)
            bt = None if b is None else Tensor(b.astype(np.float32), requires_grad=True)
            xin, win = xt, wt
            if quantized:
                xin, win = Q.pact(xt, np.float32(2.0), 4), Q.dorefa_weight(wt, 2)
            out = F.conv2d(xin, win, bt, stride, padding)
            out.backward(grad)
            return out.data, xt.grad, wt.grad, None if bt is None else bt.grad
        finally:
            conv_module.BLOCK_BYTES, conv_module.CORES = saved

    out_shape = F.conv2d(Tensor(x), Tensor(w), None, stride, padding).shape
    grad = rng.standard_normal(out_shape).astype(np.float32)
    pixels_bytes = out_shape[2] * out_shape[3] * w.shape[1] * w.shape[2] * w.shape[3] * 4
    whole, blocked = run(1 << 40), run(images_per_block * pixels_bytes)
    if quantized:
        np.testing.assert_array_equal(blocked[0], whole[0])
    np.testing.assert_allclose(blocked[0], whole[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(blocked[1:], whole[1:]):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sizes, expected", [
    ({"index0": ("1", "Data", "32K"), "index1": ("1", "Instruction", "64K"),
      "index2": ("2", "Unified", "512K"), "index3": ("3", "Unified", "8192K")}, 512 << 10),
    ({"index0": ("1", "Data", "48K"), "index2": ("2", "Unified", "2M")}, 2 << 20),
    ({"index0": ("1", "Data", "48K"), "index2": ("2", "Unified", "1048576")}, 1 << 20),
    ({"index0": ("1", "Data", "48K"), "index3": ("3", "Unified", "32M")}, None),  # no L2 listed
    ({}, None),  # no such folder (not Linux)
])
def test_l2_cache_size_is_read_from_sysfs(tmp_path, sizes, expected):
    """conv2d's block size follows the L2 cache Linux reports (K, M or plain bytes)."""
    from tinypact.functional.conv import l2_cache_bytes

    for name, (level, kind, size) in sizes.items():
        (tmp_path / name).mkdir()
        for field, value in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / name / field).write_text(value + "\n")
    assert l2_cache_bytes(str(tmp_path)) == expected


def test_block_size_is_twice_the_l2_cache():
    from tinypact.functional import conv

    assert conv.BLOCK_BYTES == 2 * (conv.l2_cache_bytes() or 1 << 20)
    assert conv._image_blocks(10, conv.BLOCK_BYTES // 3, cores=1) == [(0, 3), (3, 6), (6, 8),
                                                                       (8, 10)]
    # 4 cache-sized blocks on 3 cores: 6 blocks, so that each core has two
    assert conv._image_blocks(10, conv.BLOCK_BYTES // 3, cores=3) == [
        (0, 2), (2, 4), (4, 6), (6, 8), (8, 9), (9, 10)]
    assert conv._image_blocks(3, 1, cores=16) == [(0, 1), (1, 2), (2, 3)]
    assert conv._image_blocks(0, 1) == []


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 1 << 22), st.integers(1, 64))
def test_image_blocks_fit_the_cache_and_share_out_evenly(n, bytes_per_image, cores):
    """Blocks cover the images in order; each holds at most BLOCK_BYTES of cols (or one image);
    their sizes differ by at most one; their count is the fewest that fit, rounded up to a
    multiple of the cores (capped at one image per block)."""
    from tinypact.functional import conv

    blocks = conv._image_blocks(n, bytes_per_image, cores)
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(stop == start for (_, stop), (start, _) in zip(blocks, blocks[1:]))
    sizes = [stop - start for start, stop in blocks]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    per_block = max(1, conv.BLOCK_BYTES // bytes_per_image)
    assert max(sizes) <= per_block
    fewest = -(-n // per_block)
    assert len(blocks) == min(n, cores * -(-fewest // cores))


def test_conv2d_rectangular_stride_and_padding():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2))
    got = F.conv2d(Tensor(x), Tensor(w), stride=(2, 1), padding=(1, 0)).data
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    full = conv2d_reference(xp, w, None, 1, 0)  # stride (2, 1) = every 2nd row of stride 1
    np.testing.assert_allclose(got, full[:, :, ::2, :], rtol=1e-10, atol=1e-10)


@st.composite
def pool_problem(draw, ceil=True):
    k = draw(st.integers(1, 4))
    stride, padding = draw(st.integers(1, 4)), draw(st.integers(0, k // 2))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(k, 10)),
             draw(st.integers(k, 10)))
    x = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).standard_normal(shape)
    return x, k, stride, padding, (draw(st.booleans()) if ceil else False)


@given(pool_problem())
def test_max_pool2d_matches_nested_loops(problem):
    x, k, stride, padding, ceil_mode = problem
    got = F.max_pool2d(Tensor(x), k, stride, padding, ceil_mode).data
    expected = max_pool2d_reference(x, k, stride, padding, ceil_mode)
    np.testing.assert_array_equal(got, expected, err_msg=(
        f"max_pool2d x{x.shape} k {k} stride {stride} padding {padding} ceil {ceil_mode}"))


@pytest.mark.parametrize("size, ceil_mode, expected", [(36, False, 18), (18, False, 9),
                                                       (9, True, 5), (9, False, 4), (7, True, 4)])
def test_max_pool2d_same_sizes_of_the_svhn_network(size, ceil_mode, expected):
    """TensorFlow's 'SAME' 2x2/2 pooling: 36 -> 18, 18 -> 9; odd sizes need ceil_mode."""
    x = Tensor(np.random.default_rng(0).standard_normal((1, 2, size, size)))
    assert F.max_pool2d(x, 2, ceil_mode=ceil_mode).shape == (1, 2, expected, expected)


def test_max_pool2d_gradient_goes_to_the_first_maximum_of_a_tie():
    x = Tensor(np.zeros((1, 1, 2, 2)), requires_grad=True)
    F.max_pool2d(x, 2).backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(x.grad[0, 0], [[1, 0], [0, 0]])


@given(pool_problem(ceil=False))
def test_avg_pool2d_matches_nested_loops(problem):
    x, k, stride, padding, _ = problem
    got = F.avg_pool2d(Tensor(x), k, stride, padding).data
    np.testing.assert_allclose(got, avg_pool2d_reference(x, k, stride, padding), rtol=1e-12,
                               atol=1e-12)


def test_global_avg_pool2d():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(F.avg_pool2d(Tensor(x), "global").data,
                               x.mean(axis=(2, 3), keepdims=True))
    with pytest.raises(ValueError, match="'global'"):
        F.avg_pool2d(Tensor(x), "everything")


# --------------------------------------------------------------------------------- batch norm
@settings(max_examples=20)
@given(st.integers(2, 6), st.integers(1, 5), st.integers(1, 4),
       st.sampled_from([np.float32, np.float64]))
def test_batch_norm_training_normalises_and_updates_running_stats(n, c, hw, dtype):
    rng = np.random.default_rng(n * 100 + c * 10 + hw)
    x = (rng.standard_normal((n, c, hw, hw)) * 3 + 1000).astype(dtype)  # large offset: precision
    running_mean, running_var = np.full(c, 0.5, dtype), np.full(c, 2.0, dtype)
    weight, bias = rng.uniform(0.5, 2, c).astype(dtype), rng.standard_normal(c).astype(dtype)
    y = F.batch_norm(Tensor(x), running_mean, running_var, Tensor(weight), Tensor(bias),
                     training=True, momentum=0.1, eps=1e-4).data
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, batch_norm_reference(x64, weight, bias, eps=1e-4),
                               rtol=1e-3 if dtype == np.float32 else 1e-9, atol=1e-3 if
                               dtype == np.float32 else 1e-9)
    count = n * hw * hw
    batch_mean, batch_var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    np.testing.assert_allclose(running_mean, 0.9 * 0.5 + 0.1 * batch_mean, rtol=1e-6,
                               err_msg="running_mean = 0.9 running + 0.1 batch mean")
    np.testing.assert_allclose(running_var, 0.9 * 2.0 + 0.1 * batch_var * count / (count - 1),
                               rtol=1e-5, err_msg="running_var uses the unbiased batch variance")


def test_batch_norm_eval_uses_running_stats_and_leaves_them_alone():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 2, 2))
    running_mean, running_var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    saved = running_mean.copy(), running_var.copy()
    y_eval = F.batch_norm(Tensor(x), running_mean, running_var, training=False, eps=1e-5).data
    np.testing.assert_allclose(y_eval, batch_norm_reference(x, None, None, running_mean,
                                                            running_var, 1e-5))
    np.testing.assert_array_equal(running_mean, saved[0])
    np.testing.assert_array_equal(running_var, saved[1])
    y_train = F.batch_norm(Tensor(x), running_mean, running_var, training=True).data
    assert not np.allclose(y_train, y_eval), "train mode must use the batch statistics"


def test_batch_norm_rejects_a_single_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than one value per channel"):
        F.batch_norm(Tensor(np.ones((1, 3))), None, None, training=True)


# --------------------------------------------------------------------- layout and kernels
def plain_python(kernel):
    """The Python function a tinypact kernel compiles (itself under NUMBA_DISABLE_JIT=1)."""
    return getattr(kernel.serial, "py_func", kernel.serial)


def test_nhwc_backed_activations_give_the_same_results_as_contiguous_ones():
    """conv2d returns an NCHW view of an NHWC buffer; the next ops must not care."""
    rng = np.random.default_rng(4)
    x, w1, w2 = (rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3)),
                 rng.standard_normal((5, 4, 3, 3)))
    h = F.conv2d(Tensor(x), Tensor(w1), padding=1)
    assert h.data.transpose(0, 2, 3, 1).flags.c_contiguous
    chain = F.max_pool2d(F.batch_norm(F.relu(h), None, None, training=True), 2)
    out = F.conv2d(chain, Tensor(w2)).data
    h_ref = np.ascontiguousarray(conv2d_reference(x, w1, None, 1, 1))
    chain_ref = max_pool2d_reference(batch_norm_reference(np.maximum(h_ref, 0)), 2)
    np.testing.assert_allclose(out, conv2d_reference(chain_ref, w2), rtol=1e-9, atol=1e-9)


def test_parallel_and_serial_kernels_agree_on_large_inputs():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 20, 20, 64)).astype(np.float32)  # 204800 >= PARALLEL_MIN_SIZE
    dcols = rng.standard_normal((8, 9, 9, 3, 3, 16)).astype(np.float32)
    outs = []
    for variant in ("serial", "parallel"):
        out = np.empty((8, 10, 10, 64), np.float32)
        arg = np.empty((8, 10, 10, 64), np.int32)
        getattr(_kernels.max_pool_forward_nhwc, variant)(x, 3, 3, 2, 2, 1, 1, out, arg)
        rows = x.reshape(-1, 64)
        bounds = _kernels.row_chunks(rows.shape[0])
        mean = getattr(_kernels.column_sums, variant)(rows, bounds) / rows.shape[0]
        stats = mean, getattr(_kernels.centered_square_sums, variant)(rows, mean, bounds)
        grad = np.empty((8, 9, 9, 16), np.float32)
        getattr(_kernels.col2im_nhwc, variant)(dcols, 1, 1, 1, 1, grad)
        cols = np.empty((8, 20, 20, 3, 3, 64), np.float32)
        getattr(_kernels.im2col_nhwc, variant)(x, 1, 1, 1, 1, cols)
        outs.append((out, arg, stats[0], stats[1], grad, cols))
    for name, a, b in zip(["max", "argmax", "mean", "squares", "col2im", "im2col"], *outs):
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=f"{name}: serial vs parallel")


def test_kernels_run_as_plain_python():
    """What NUMBA_DISABLE_JIT=1 runs: the Python source gives the compiled kernel's answer."""
    rng = np.random.default_rng(6)
    dcols = rng.standard_normal((1, 3, 3, 2, 2, 2))
    compiled, plain = np.full((1, 6, 6, 2), np.nan), np.full((1, 6, 6, 2), np.nan)
    _kernels.col2im_nhwc.serial(dcols, 2, 2, 0, 1, compiled)
    plain_python(_kernels.col2im_nhwc)(dcols, 2, 2, 0, 1, plain)
    np.testing.assert_array_equal(compiled, plain)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 3),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 2), pw=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_im2col_and_col2im_are_adjoint_windows_of_the_zero_padded_input(
        n, h, w, c, kh, kw, sh, sw, ph, pw, seed):
    """im2col = the windows of np.pad's zero-padded input; col2im = its adjoint (scatter-add of
    the windows into the padded input, padding cut off); both written over garbage (NaN)."""
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    assume(out_h >= 1 and out_w >= 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c))
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    want = np.empty((n, out_h, out_w, kh, kw, c))
    for oh in range(out_h):
        for ow in range(out_w):
            want[:, oh, ow] = padded[:, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw, :]
    dcols = rng.standard_normal(want.shape)
    scattered = np.zeros_like(padded)
    for oh in range(out_h):
        for ow in range(out_w):
            scattered[:, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw, :] += dcols[:, oh, ow]
    for run in (_kernels.im2col_nhwc.serial, _kernels.im2col_nhwc.parallel,
                plain_python(_kernels.im2col_nhwc)):
        cols = np.full(want.shape, np.nan)
        run(x, sh, sw, ph, pw, cols)
        np.testing.assert_array_equal(cols, want)
    for run in (_kernels.col2im_nhwc.serial, _kernels.col2im_nhwc.parallel,
                plain_python(_kernels.col2im_nhwc)):
        grad = np.full(x.shape, np.nan)
        run(dcols, sh, sw, ph, pw, grad)
        np.testing.assert_allclose(grad, scattered[:, ph:ph + h, pw:pw + w, :], rtol=1e-12,
                                   atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8), c=st.integers(1, 5),
       o=st.integers(1, 5), kh=st.integers(1, 5), kw=st.integers(1, 5), ph=st.integers(0, 4),
       pw=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_transposed_input_gradient_equals_col2im(n, h, w, c, o, kh, kw, ph, pw, seed):
    """conv2d's input gradient as the convolution of g with the flipped weight against its plain
    reading (dcols = g @ W scattered back by col2im), in float64: the same sums in another order.
    Stride 1, padding up to kernel - 1, any input size (the choice of the two is tested below)."""
    from tinypact.functional import conv as conv_module

    assume(ph <= kh - 1 and pw <= kw - 1)
    out_h, out_w = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    assume(out_h >= 1 and out_w >= 1)
    rng = np.random.default_rng(seed)
    g, weight = rng.standard_normal((n, out_h, out_w, o)), rng.standard_normal((o, c, kh, kw))
    plain, transposed = np.full((n, h, w, c), np.nan), np.full((n, h, w, c), np.nan)
    w_mat = weight.transpose(0, 2, 3, 1).reshape(o, -1)
    conv_module._input_grad_col2im(g, w_mat, (kh, kw), (1, 1), (ph, pw), plain)
    conv_module._input_grad_transposed(g, conv_module.flipped_weight_matrix(weight), kh, kw, ph,
                                       pw, transposed)
    np.testing.assert_allclose(transposed, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size, out_size, kernel, stride, padding, expected", [
    ((32, 32), (32, 32), (3, 3), (1, 1), (1, 1), True),  # ResNet20's 3x3 "same" convs
    ((18, 18), (18, 18), (3, 3), (1, 1), (1, 1), True),
    ((32, 32), (16, 16), (3, 3), (2, 2), (1, 1), False),  # stride 2: col2im
    ((9, 9), (7, 7), (3, 3), (1, 1), (0, 0), False),  # more input pixels than output: col2im
    ((5, 5), (1, 1), (5, 5), (1, 1), (0, 0), False),
    ((4, 4), (8, 8), (3, 3), (1, 1), (3, 3), False),  # padding beyond kernel - 1
    ((6, 6), (6, 8), (3, 3), (1, 1), (1, 2), True),
])
def test_transposed_input_gradient_is_chosen_by_shape(size, out_size, kernel, stride, padding,
                                                      expected):
    from tinypact.functional.conv import transposed_input_grad

    assert transposed_input_grad(size, out_size, kernel, stride, padding) is expected


def test_conv2d_input_gradient_does_not_depend_on_the_threads(monkeypatch):
    """Blocks of images on 1 or 2 threads: the same bits for dx, dW and db (the block split and
    dW's summation order depend on the shapes only)."""
    from tinypact import _threads
    from tinypact.functional import conv as conv_module

    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 4, 9, 9)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    g = rng.standard_normal((6, 5, 9, 9)).astype(np.float32)
    if _threads._blas_threads()["set"] is None:
        pytest.skip("block threads need an OpenBLAS whose thread count can be set")
    monkeypatch.setattr(conv_module, "BLOCK_BYTES", 2 * 81 * 36 * 4)  # two images per block
    results = []
    for count in (1, 2):
        monkeypatch.setattr(_threads, "workers", lambda count=count: count)
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
        F.conv2d(xt, wt, bt, 1, 1).backward(g)
        results.append((xt.grad, wt.grad, bt.grad))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


# --------------------------------------------------------------------- losses, dropout, errors
def test_cross_entropy_of_uniform_logits_is_log_classes():
    loss = F.cross_entropy(Tensor(np.zeros((4, 10))), np.array([0, 3, 9, 2]))
    assert loss.item() == pytest.approx(np.log(10))


@pytest.mark.parametrize("labels, error, message", [
    (np.array([0, 5]), ValueError, r"labels must lie in \[0, 3\)"),
    (np.array([0.0, 1.0]), TypeError, "must be integers"),
    (np.array([0]), ValueError, "logits \\(N, classes\\) and labels \\(N,\\)")])
def test_cross_entropy_rejects_bad_labels(labels, error, message):
    with pytest.raises(error, match=message):
        F.cross_entropy(Tensor(np.zeros((2, 3))), labels)


def test_conv2d_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="input has 3 channels but the weight expects 4"):
        F.conv2d(Tensor(np.zeros((1, 3, 5, 5))), Tensor(np.zeros((2, 4, 3, 3))))


def test_dropout_scales_kept_values_and_is_identity_in_eval():
    x = Tensor(np.ones((200, 100), np.float32))
    y = F.dropout(x, 0.3, training=True, generator=np.random.default_rng(0)).data
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01, f"kept fraction {kept.mean()}, expected about 0.7"
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert F.dropout(x, 0.3, training=False) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        F.dropout(x, 1.0)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in ops.relu
@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from([(3, 4, 5, 6), (2, 70, 30, 32), (7,), (4, 9)]),
       layout=st.sampled_from(["c", "nhwc", "strided"]), seed=st.integers(0, 2**16))
def test_relu_fused_kernels_give_the_plain_ops_bits(shape, layout, seed):
    """F.relu (Numba passes, parallel above 65,536 values) against ops.relu (NumPy), bit for
    bit, forward and backward, with -0, infinities and NaN among the inputs and gradients and
    the gradient in another memory layout than the input."""
    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45], np.float32)

    def data(full_shape):
        values = rng.standard_normal(full_shape).astype(np.float32)
        values.flat[rng.integers(0, values.size, 10)] = rng.choice(special, 10)
        return values

    x = data(shape)
    if layout == "nhwc" and len(shape) == 4:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif layout == "strided":
        x = data(shape[:-1] + (2 * shape[-1],))[..., ::2]
    g = data(shape)
    fast, plain = Tensor(x, requires_grad=True), Tensor(x.copy(), requires_grad=True)
    out_fast, out_plain = F.relu(fast), ops.relu(plain)
    np.testing.assert_array_equal(out_fast.data, out_plain.data)
    assert np.array_equal(np.signbit(out_fast.data), np.signbit(out_plain.data))
    out_fast.backward(g)
    out_plain.backward(g)
    np.testing.assert_array_equal(fast.grad, plain.grad)
    assert np.array_equal(np.signbit(fast.grad), np.signbit(plain.grad))


@settings(max_examples=40, deadline=None)
@given(o=st.integers(1, 130), c=st.integers(1, 70), kh=st.integers(1, 5), kw=st.integers(1, 5),
       rows=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_conv_layout_kernels_match_numpy(o, c, kh, kw, rows, seed):
    """weight_grad_to_oihw = the transposed copy it replaces; add_row = `x += row` (same bits);
    column_sums = the column sums (float64 accumulation); each compiled serial, parallel, and
    as plain Python."""
    rng = np.random.default_rng(seed)
    grad = rng.standard_normal((kh * kw * c, o)).astype(np.float32)
    want = np.ascontiguousarray(grad.reshape(kh, kw, c, o).transpose(3, 2, 0, 1))
    x = rng.standard_normal((rows, o)).astype(np.float32)
    row = rng.standard_normal(o).astype(np.float32)
    bounds = _kernels.row_chunks(rows)
    for variant in ("serial", "parallel", "py_func"):
        def run(k, *args):
            return (plain_python(k) if variant == "py_func" else getattr(k, variant))(*args)

        out = np.full((o, c, kh, kw), np.nan, np.float32)
        run(_kernels.weight_grad_to_oihw, grad, out)
        np.testing.assert_array_equal(out, want)
        added = x.copy()
        run(_kernels.add_row, added, row)
        np.testing.assert_array_equal(added, x + row)
        sums = run(_kernels.column_sums, x, bounds)
        np.testing.assert_allclose(sums, x.astype(np.float64).sum(axis=0), rtol=1e-12, atol=1e-12)
