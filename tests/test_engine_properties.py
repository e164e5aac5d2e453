"""Property tests: for random conv/linear layers the integer engine equals the NumPy reference
(the engine's kernels and thresholds against the float epilogue evaluated directly).

Each example is a small network input -> act(abits) -> conv|linear(wbits) [-> bn] [-> maxpool]
-> act(obits) -> flatten -> linear (8-bit logits), with random shapes, stride, padding, weight
quantizer, bits 1..8, batch-norm statistics (negative and zero gammas included), alphas and
pixels. Scales are drawn from a few exact binary fractions as well as arbitrary floats, so that
many accumulators land exactly on rounding ties (the hardest case for thresholds).
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from integer_engine.executor import Engine
from integer_engine.export import lower_graph
from integer_engine.reference import run_reference
from integer_engine.epilogue import activation_code, affine
from integer_engine.requant import apply_thresholds, epilogue_thresholds

WEIGHT_KINDS = {"dorefa": range(1, 9), "sawb": (1, 2, 3, 4, 5, 8), "sawb0": (2, 4, 8)}


def scale(draw, low: float, high: float) -> float:
    """An exact binary fraction (ties likely) or an arbitrary float in [low, high]."""
    if draw(st.booleans()):
        return draw(st.sampled_from([x for x in (0.125, 0.25, 0.5, 1.0, 2.0, 4.0) if low <= x <= high]))
    return draw(st.floats(low, high, allow_nan=False, allow_infinity=False))


def _out(size, k, stride, padding):
    return (size + 2 * padding - k) // stride + 1


@st.composite
def layer_network(draw):
    """(graph, params, images) of a one-layer network under test, plus an 8-bit logits layer."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    conv = draw(st.booleans())
    cin, cout = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    abits, obits = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    wkind = draw(st.sampled_from(sorted(WEIGHT_KINDS)))
    wbits = draw(st.sampled_from(list(WEIGHT_KINDS[wkind])))
    graph = [{"id": "input", "op": "input", "inputs": [], "shape": None, "scale": 1 / 255},
             {"id": "a0", "op": "act", "inputs": ["input"], "kind": "pact", "bits": abits, "alpha": "a0.alpha"}]
    params = {"a0.alpha": np.array(scale(draw, 0.1, 1.0), np.float32)}
    if conv:
        k = draw(st.integers(1, 4))
        padding = draw(st.integers(0, 2))
        h = draw(st.integers(max(1, k - 2 * padding), 9))
        w = draw(st.integers(max(1, k - 2 * padding), 9))
        stride = draw(st.integers(1, 3))
        graph[0]["shape"] = [cin, h, w]
        weight = rng.normal(0, 1, (cout, cin, k, k))
        graph.append({"id": "L", "op": "conv", "inputs": ["a0"], "weight": "L.weight", "bias": None,
                      "stride": stride, "padding": padding, "wq": {"kind": wkind, "bits": wbits}})
        shape = (cout, _out(h, k, stride, padding), _out(w, k, stride, padding))
    else:
        fin = draw(st.integers(1, 40))
        graph[0]["shape"] = [fin, 1, 1]
        graph.append({"id": "f0", "op": "flatten", "inputs": ["a0"]})
        weight = rng.normal(0, 1, (cout, fin))
        graph.append({"id": "L", "op": "linear", "inputs": ["f0"], "weight": "L.weight", "bias": None,
                      "wq": {"kind": wkind, "bits": wbits}})
        shape = (cout,)
    if draw(st.booleans()):  # exactly-zero and tied weights
        weight = np.round(weight * 2) / 2
    params["L.weight"] = weight.astype(np.float32)
    if draw(st.booleans()):
        params["L.bias"] = rng.normal(0, 1, cout).astype(np.float32)
        graph[-1]["bias"] = "L.bias"
    last = "L"
    if draw(st.booleans()):
        gamma = rng.normal(0, 1, cout) * scale(draw, 0.125, 4.0)
        gamma[rng.random(cout) < 0.15] = 0.0
        gamma[rng.random(cout) < 0.15] = 1e-6  # tiny gamma: a nearly constant channel
        params.update({"bn.weight": gamma.astype(np.float32),
                       "bn.bias": rng.normal(0, 1, cout).astype(np.float32),
                       "bn.running_mean": rng.normal(0, 1, cout).astype(np.float32),
                       "bn.running_var": (rng.random(cout) * scale(draw, 0.125, 4.0)
                                          * draw(st.sampled_from([1.0, 1e-6]))).astype(np.float32)})
        graph.append({"id": "bn", "op": "bn", "inputs": [last], "prefix": "bn", "eps": 1e-5})
        last = "bn"
    if conv and min(shape[1:]) >= 2 and draw(st.booleans()):
        pk = draw(st.integers(2, min(3, *shape[1:])))
        ps, pp = draw(st.integers(1, pk)), draw(st.integers(0, pk // 2))
        graph.append({"id": "mp", "op": "maxpool", "inputs": [last], "kernel": pk, "stride": ps, "padding": pp})
        shape = (cout, _out(shape[1], pk, ps, pp), _out(shape[2], pk, ps, pp))
        last = "mp"
    act_kind = draw(st.sampled_from(["pact", "relu", "dorefa"]))
    graph.append({"id": "a1", "op": "act", "inputs": [last], "kind": act_kind, "bits": obits,
                  "alpha": 1.0 if act_kind == "dorefa" else "a1.alpha"})
    params["a1.alpha"] = np.array(scale(draw, 0.125, 8.0), np.float32)
    graph.append({"id": "f1", "op": "flatten", "inputs": ["a1"]})
    graph.append({"id": "fc", "op": "linear", "inputs": ["f1"], "weight": "fc.weight", "bias": "fc.bias",
                  "wq": {"kind": "dorefa", "bits": 8}})
    params["fc.weight"] = rng.normal(0, 1, (3, int(np.prod(shape)))).astype(np.float32)
    params["fc.bias"] = rng.normal(0, 1, 3).astype(np.float32)
    images = rng.integers(0, 256, size=(draw(st.integers(1, 4)), *graph[0]["shape"]), dtype=np.uint8)
    if draw(st.booleans()):  # saturated pixels
        images[..., :1] = draw(st.sampled_from([0, 255]))
    return graph, params, images


@settings(max_examples=1200)
@given(layer_network())
def test_engine_equals_reference_on_random_layers(case):
    graph, params, images = case
    model = lower_graph(graph, params)
    got = Engine(model).run(images, collect=True).outputs
    want = run_reference(model, images)
    for layer in model.layers:
        g, w = got[layer.name], want[layer.name]
        bad = np.argwhere(g != w)
        assert g.shape == w.shape and bad.size == 0, (
            f"layer {layer.name} ({layer.attrs['kind']}, wbits={layer.attrs.get('wbits')}, "
            f"abits={layer.attrs.get('abits')}, out_max={layer.attrs.get('out_max')}): "
            f"{len(bad)} mismatches; first at {bad[0] if bad.size else None}: "
            f"engine {g[tuple(bad[0])] if bad.size else g.shape} vs reference {w[tuple(bad[0])] if bad.size else w.shape}")


@settings(max_examples=300)
@given(st.floats(2**-20, 1e3, width=32), st.floats(-1e4, 1e4, width=32),
       st.floats(-8, 8, width=32), st.floats(2**-10, 1e2, width=32), st.integers(1, 255),
       st.integers(0, 5000), st.sampled_from(["half_up", "half_even"]), st.booleans())
def test_thresholds_equal_the_epilogue_on_every_accumulator(scale_, shift, bn, alpha, n, bound, rule, tie):
    """Exhaustively over [-bound, bound]: #thresholds reached == the float32 epilogue's code,
    for either sign of the batch-norm scale and either rounding rule."""
    if tie:  # binary fractions put many accumulators exactly on a .5 tie
        scale_, shift, bn, alpha = 0.25, float(np.round(shift)), float(np.sign(bn) or 1.0), float(n)
    consts = [np.array([v], np.float32) for v in (0.0, bn, shift)]
    th, direction = epilogue_thresholds(np.float32(scale_), *consts, np.float32(alpha), n, rule, -bound, bound)
    acc = np.arange(-bound, bound + 1, dtype=np.int64)[:, None]
    want = activation_code(affine(acc, np.float32(scale_), *consts), np.float32(alpha), n, rule)
    got = apply_thresholds(acc, th, direction, 1)
    bad = np.flatnonzero(got[:, 0] != want[:, 0])
    assert bad.size == 0, (f"scale={scale_!r} bn={bn!r} shift={shift!r} alpha={alpha!r} n={n} {rule}: "
                           f"acc={acc[bad[0], 0]} gives {got[bad[0], 0]}, epilogue {want[bad[0], 0]}")


@settings(max_examples=200)
@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(WEIGHT_KINDS)), st.integers(1, 8), st.integers(1, 8),
       st.integers(1, 8), st.sampled_from(["avgpool", "subsample"]), st.integers(1, 3))
def test_engine_equals_reference_on_random_residual_networks(seed, wkind, wbits, abits, shortcut_bits, mode, n):
    """ResNet blocks (requant of the stream, float32 residual add, shortcuts, global pooling)."""
    from test_engine_models import resnet_like
    wbits = wbits if wbits in WEIGHT_KINDS[wkind] else max(WEIGHT_KINDS[wkind])
    rng = np.random.default_rng(seed)
    model = lower_graph(*resnet_like(rng, wbits=wbits, abits=abits, wq=wkind, size=8, widths=(2, 4),
                                     shortcut_bits=shortcut_bits, shortcut_mode=mode))
    images = rng.integers(0, 256, size=(n, *model.input_shape), dtype=np.uint8)
    got = Engine(model).run(images, collect=True).outputs
    want = run_reference(model, images)
    for layer in model.layers:
        bad = np.argwhere(got[layer.name] != want[layer.name])
        assert bad.size == 0, (f"seed={seed} {wkind} W{wbits}A{abits}S{shortcut_bits} {mode}: layer "
                               f"{layer.name} ({layer.attrs['kind']}) differs at {bad[0]}")


@settings(max_examples=200)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 5), st.integers(1, 40), st.integers(1, 255),
       st.sampled_from(["rows_first", "channels_first"]), st.booleans())
def test_fused_threshold_kernel_equals_numpy_thresholds(seed, images, channels, rows, n, layout, affine):
    """The Numba kernel (layouts, on-the-fly `2 acc - n_w rowsum`) == the NumPy path used without JIT."""
    from integer_engine.requant import full_accumulator, threshold_codes
    rng = np.random.default_rng(seed)
    shape = (images * rows, channels) if layout == "rows_first" else (channels, images * rows)
    acc = rng.integers(-400, 400, size=shape)
    scale, offset = (2, int(rng.integers(1, 256))) if affine else (1, 0)
    rowsum = rng.integers(0, 200, size=(images, rows)) if affine else None
    th = np.sort(rng.integers(-800, 800, size=(channels, n)), axis=1)
    direction = rng.choice(np.array([-1, 1], dtype=np.int8), size=channels)
    th[direction < 0] = th[direction < 0, ::-1]  # non-increasing for d = -1
    got = threshold_codes(acc, th, direction, images, layout, scale, offset, rowsum)
    full = full_accumulator(acc, images, layout, scale, offset, rowsum, channels)
    want = apply_thresholds(full, th, direction, 1)
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{layout} n={n}: at {bad[0]} kernel {got[tuple(bad[0])]} vs numpy {want[tuple(bad[0])]}"


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1))
def test_calibrated_engine_equals_reference(seed):
    """`Engine(calibrate=...)` times bit-serial against int8 per layer and keeps the faster: either
    choice, and the fusions planned after it, must leave every layer's output unchanged."""
    from random_networks import random_network

    net, images = random_network(np.random.default_rng(seed))
    model = lower_graph(net.graph(), net.state_dict())
    engine = Engine(model, calibrate=2)
    got = engine.run(images, collect=True).outputs
    want = run_reference(model, images)
    for layer in model.layers:
        assert np.array_equal(got[layer.name], want[layer.name]), (
            f"seed {seed}: layer {layer.name} differs after calibration {engine.calibration}")
    for name, (bitserial, int8) in engine.calibration.items():  # the faster of the two was kept
        if bitserial != int8:
            assert engine.compute[name].method == ("bitserial" if bitserial < int8 else "int8"), (
                f"seed {seed}: {name} kept {engine.compute[name].method} after {engine.calibration[name]}")


@settings(max_examples=25)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(1, 1), (2, 2), (4, 4), (3, 2)]),
       st.lists(st.integers(1, 5), min_size=2, max_size=5), st.lists(st.booleans(), min_size=5, max_size=5))
def test_engine_plan_reused_across_batch_sizes(seed, bits, batches, collects):
    """One engine, runs of changing batch sizes (each size's compiled plan and its buffers made
    once and reused): every run's logits, and every layer's codes when collected, equal the
    reference, whatever ran before (no state leaks from one run into the next)."""
    from test_engine_models import svhn_like
    rng = np.random.default_rng(seed)
    model = lower_graph(*svhn_like(rng, wbits=bits[0], abits=bits[1], size=12, width=4))
    engine = Engine(model)
    for n, collect in zip(batches, collects):
        images = rng.integers(0, 256, size=(n, *model.input_shape), dtype=np.uint8)
        got = engine.run(images, collect=collect)
        want = run_reference(model, images)
        last = model.layers[-1].name
        assert np.array_equal(got.logits, want[last]), f"seed={seed} W{bits[0]}A{bits[1]} batch {n}: logits differ"
        assert [s.name for s in got.stats] == [layer.name for layer in model.layers]
        for name, codes in got.outputs.items():
            assert np.array_equal(codes, want[name]), f"seed={seed} batch {n}: layer {name} differs"
    assert len(engine._plans) <= min(len(set(batches)), 4)


@settings(max_examples=15)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(1, 1), (2, 2), (4, 4), (8, 8)]),
       st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_avx2_rule_runs_8bit_convs_on_the_float32_tile(seed, bits, batches):
    """With the AVX2 int8 sequence (no VNNI: `kernels.select.float32_conv`), the 8-bit first conv
    (8-bit pixels x 8-bit weights, where `vpmaddubsw` would need its split form) runs the float32
    tile, and the engine still equals the reference at every batch size."""
    import pytest

    from integer_engine.kernels import int8dot
    from test_engine_models import svhn_like
    rng = np.random.default_rng(seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8dot, "LOWERING", "vpmaddubsw")
        model = lower_graph(*svhn_like(rng, wbits=bits[0], abits=bits[1], size=12, width=4))
        engine = Engine(model)
        convs = [layer.name for layer in model.layers if layer.attrs["kind"] == "conv"]
        assert engine.compute[convs[0]].method == "float32", engine.compute[convs[0]].method
        for name in convs[1:]:  # codes of at most 8 bits against these weights: float32 only at W8A8
            assert (engine.compute[name].method == "float32") == (bits == (8, 8)), (name, engine.compute[name].method)
        for n in batches:
            images = rng.integers(0, 256, size=(n, *model.input_shape), dtype=np.uint8)
            got = engine.run(images, collect=True).outputs
            want = run_reference(model, images)
            for layer in model.layers:
                assert np.array_equal(got[layer.name], want[layer.name]), (
                    f"seed={seed} W{bits[0]}A{bits[1]} batch {n}: layer {layer.name} differs")
