"""The .tpq file: round trip, validation, atomic writes, and a loader fuzz (byte flips, truncation).

The fuzz property: loading a damaged file either raises EngineError (one line) or returns a model
identical to the original (a flip in bytes nobody reads, e.g. a zip timestamp). Never another
exception, never a silently different model.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integer_engine import EngineError
from integer_engine.export import lower_graph
from integer_engine.format import FORMAT_NAME, load_model, save_model
from test_engine_models import resnet_like

MODEL = lower_graph(*resnet_like(np.random.default_rng(5), blocks=1, widths=(2, 4), size=8))


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpq") / "model.tpq"
    save_model(MODEL, path)
    return path.read_bytes()


def same_model(a, b) -> bool:
    if [layer.attrs for layer in a.layers] != [layer.attrs for layer in b.layers] or a.header["input"] != b.header["input"]:
        return False
    return all(set(x.arrays) == set(y.arrays) and all(
        x.arrays[k].dtype == y.arrays[k].dtype and np.array_equal(x.arrays[k], y.arrays[k]) for k in x.arrays)
        for x, y in zip(a.layers, b.layers))


def test_roundtrip_is_identical_and_loadable_without_pickle(tmp_path):
    path = tmp_path / "m.tpq"
    save_model(MODEL, path)
    assert same_model(load_model(path), MODEL)
    with np.load(path, allow_pickle=False) as data:  # a plain npz: no pickled objects anywhere
        header = json.loads(str(data["header"][()]))
    assert header["format"] == FORMAT_NAME and header["version"] == 2
    assert set(header["arrays"]) == {f"{l.name}.{k}" for l in MODEL.layers for k in l.arrays}
    assert not list(tmp_path.glob(".tmp-*")), "atomic write left a temp file behind"


def _rewrite(src, dst, edit_header=None, edit_arrays=None, fix_checksums=True):
    """Copy a .tpq, editing the header JSON and/or arrays; optionally re-sign the checksums."""
    import hashlib
    with np.load(src, allow_pickle=False) as data:
        members = {k: np.array(data[k]) for k in data.files}
    header = json.loads(str(members["header"][()]))
    if edit_arrays:
        edit_arrays(members)
        for key, spec in header["arrays"].items():
            if fix_checksums:
                spec["sha256"] = hashlib.sha256(np.ascontiguousarray(members[key]).tobytes()).hexdigest()
                spec["shape"] = list(members[key].shape)
                spec["dtype"] = members[key].dtype.str
    if edit_header:
        edit_header(header)
    text = json.dumps(header)
    members["header"] = np.array(text)
    if fix_checksums:
        members["header_sha256"] = np.array(hashlib.sha256(text.encode()).hexdigest())
    with open(dst, "wb") as handle:  # a handle, so np.savez does not append ".npz"
        np.savez(handle, **members)


def _kind(h, kind):
    return next(layer for layer in h["layers"] if layer["kind"] == kind)


def _count_the_other_way(arrays: dict) -> None:
    """Every threshold layer's directions flipped, its thresholds reversed (still ordered)."""
    for key in [k for k in arrays if k.endswith(".direction")]:
        arrays[key] = -arrays[key]
        th = key.replace(".direction", ".thresholds")
        arrays[th] = arrays[th][:, ::-1].copy()


def _first_conv(h):
    return next(layer for layer in h["layers"] if layer["kind"] == "conv")


@pytest.mark.parametrize("edit_header,edit_arrays,message", [
    (lambda h: h.update(version=1), None, "unsupported model format version 1 .* export the model again"),
    (lambda h: h.update(format="something-else"), None, "not an integer model file"),
    (lambda h: _first_conv(h).update(stride=3), None, "macs does not equal"),
    (lambda h: _first_conv(h).update(out_shape=[1, 1, 1]), None, "out_shape"),
    (lambda h: _first_conv(h).update(wbits=9), None, "wbits 9 outside 1..8"),
    (lambda h: _first_conv(h).update(inputs=["nowhere"]), None, "must name earlier layers"),
    (lambda h: h["layers"].pop(), None, "arrays that belong to no layer"),
    (lambda h: _first_conv(h).update(acc_bound=1000), None, "acc_bound/in_max do not match"),
    (lambda h: _kind(h, "requant").update(in_max=3), None, "in_max 3 does not match"),
    (lambda h: _kind(h, "avgpool").update(out_max=1), None, "out_max 1 should be"),
    (lambda h: _kind(h, "add").update(input_bounds=[1, 1]), None, "input_bounds do not match"),
    (None, lambda m: m.update({k: m[k].astype(np.int32) for k in m if k.endswith(".thresholds")}), "expected int64"),
    (None, lambda m: m.update({k: np.full_like(m[k], 255) for k in m if k.endswith(".weight")}), "exceed n_w"),
    (None, lambda m: m.update({k: m[k][:, ::-1].copy() for k in m if k.endswith(".thresholds")}),
     "thresholds are not ordered along the levels"),
    (None, _count_the_other_way, "do not reproduce the layer's float epilogue in channel 0, direction"),
    (None, lambda m: m.update({k: 0 * m[k] for k in m if k.endswith(".direction")}),
     "direction must be"),
    (None, lambda m: m.update({k: m[k] * 1000 for k in m if k.endswith(".thresholds")}),
     "thresholds lie outside the accumulator range"),
    (None, lambda m: m.update({k: m[k] + np.float32(0.25) for k in m if k.endswith(".bn_shift")}),
     "thresholds do not reproduce the layer's float epilogue"),
    (None, lambda m: m.update({k: -m[k] for k in m if k.endswith(".alpha")}), "alpha positive"),
    (lambda h: _kind(h, "add").update(rounding="stochastic"), None, "rounding must be one of"),
])
def test_validation_refuses_inconsistent_files_even_with_valid_checksums(tmp_path, edit_header, edit_arrays, message):
    save_model(MODEL, tmp_path / "ok.tpq")
    _rewrite(tmp_path / "ok.tpq", tmp_path / "bad.tpq", edit_header, edit_arrays)
    with pytest.raises(EngineError, match=message):
        load_model(tmp_path / "bad.tpq")


def test_checksums_catch_edits(tmp_path):
    save_model(MODEL, tmp_path / "ok.tpq")
    _rewrite(tmp_path / "ok.tpq", tmp_path / "a.tpq", None,
             lambda m: m.update({k: m[k] + 1 for k in m if k.endswith(".thresholds")}), fix_checksums=False)
    with pytest.raises(EngineError, match=r"array '.*thresholds' checksum mismatch"):
        load_model(tmp_path / "a.tpq")
    _rewrite(tmp_path / "ok.tpq", tmp_path / "h.tpq", lambda h: h.update(note="x"), None, fix_checksums=False)
    with pytest.raises(EngineError, match="header checksum mismatch"):
        load_model(tmp_path / "h.tpq")


def test_not_a_model_file(tmp_path):
    (tmp_path / "x.tpq").write_bytes(b"hello")
    with pytest.raises(EngineError, match="not a valid integer model file"):
        load_model(tmp_path / "x.tpq")
    with pytest.raises(EngineError, match="not found"):
        load_model(tmp_path / "missing.tpq")
    np.savez(tmp_path / "p.npz", header=np.array([{"a": 1}], dtype=object))  # a pickled object array
    with pytest.raises(EngineError):
        load_model(tmp_path / "p.npz")
    with zipfile.ZipFile(tmp_path / "c.tpq", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("header.npy", b"x" * 100)
    with pytest.raises(EngineError, match="invalid size or compression"):
        load_model(tmp_path / "c.tpq")


def _load_damaged(tmp_path, data: bytes):
    path = tmp_path / "damaged.tpq"
    path.write_bytes(data)
    try:
        return load_model(path)
    except EngineError as err:
        assert "\n" not in str(err), f"error message is not one line: {err!r}"
        return None


@settings(max_examples=400)
@given(st.data())
def test_fuzz_byte_flips_never_crash_or_silently_change(tmp_path_factory, model_bytes, data):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    raw = bytearray(model_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    loaded = _load_damaged(tmp_path, bytes(raw))
    assert loaded is None or same_model(loaded, MODEL), "a damaged file loaded as a different model"


@settings(max_examples=200)
@given(st.data())
def test_fuzz_truncation_and_garbage(tmp_path_factory, model_bytes, data):
    tmp_path = tmp_path_factory.mktemp("trunc")
    cut = data.draw(st.integers(0, len(model_bytes) - 1))
    tail = data.draw(st.binary(max_size=64))
    loaded = _load_damaged(tmp_path, model_bytes[:cut] + tail)
    assert loaded is None or same_model(loaded, MODEL)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.tpq"
    save_model(MODEL, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        save_model(MODEL, path)
    assert path.read_bytes() == before and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
