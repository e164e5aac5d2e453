"""Synthetic tinypact checkpoints (ARCHITECTURE.md contract) for the three supported networks,
built with NumPy only, plus export tests on them.

`fmnist_like`, `svhn_like` and `resnet_like` return (graph, params) with random weights,
batch-norm statistics and alphas; `write_checkpoint` stores them as `checkpoint.npz`.
`fake_quant_forward` is an independent float64 interpreter of the graph (the training-time
fake-quantized model) that the engine's predictions are compared with.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from integer_engine import EngineError
from integer_engine.executor import run_model
from integer_engine.export import export_checkpoint, lower_graph, quantize_weight
from integer_engine.format import layer_shapes, load_model, save_model
from integer_engine.reference import run_reference


class GraphBuilder:
    """Append graph nodes and their float32 parameters; `last` is the most recent node id."""

    def __init__(self, shape, rng, wq="dorefa"):
        self.rng = rng
        self.wq = wq
        self.graph = [{"id": "input", "op": "input", "inputs": [], "shape": list(shape), "scale": 1 / 255}]
        self.params: dict[str, np.ndarray] = {}
        self.last = "input"
        self.count = 0

    def node(self, op, inputs=None, **fields):
        self.count += 1
        nid = f"{op}{self.count}"
        self.graph.append({"id": nid, "op": op, "inputs": inputs or [self.last], **fields})
        self.last = nid
        return nid

    def conv(self, cin, cout, k=3, stride=1, padding=1, bits=2, bias=False, inputs=None):
        nid = f"conv{self.count + 1}"
        self.params[f"{nid}.weight"] = (self.rng.normal(0, 1, (cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        if bias:
            self.params[f"{nid}.bias"] = self.rng.normal(0, 0.1, cout).astype(np.float32)
        return self.node("conv", inputs, weight=f"{nid}.weight", bias=f"{nid}.bias" if bias else None,
                         stride=stride, padding=padding, wq={"kind": self.wq, "bits": bits})

    def linear(self, fin, fout, bits=2, bias=True):
        nid = f"linear{self.count + 1}"
        self.params[f"{nid}.weight"] = (self.rng.normal(0, 1, (fout, fin)) / np.sqrt(fin)).astype(np.float32)
        if bias:
            self.params[f"{nid}.bias"] = self.rng.normal(0, 0.1, fout).astype(np.float32)
        return self.node("linear", weight=f"{nid}.weight", bias=f"{nid}.bias" if bias else None,
                         wq={"kind": self.wq, "bits": bits})

    def bn(self, channels, scale=1.0, negative=0.2):
        nid = f"bn{self.count + 1}"
        gamma = self.rng.uniform(0.5, 1.5, channels) * scale
        gamma[self.rng.random(channels) < negative] *= -1  # negative gammas flip the thresholds
        self.params[f"{nid}.weight"] = gamma.astype(np.float32)
        self.params[f"{nid}.bias"] = self.rng.normal(0.3, 0.3, channels).astype(np.float32)
        self.params[f"{nid}.running_mean"] = self.rng.normal(0, 0.3, channels).astype(np.float32)
        self.params[f"{nid}.running_var"] = self.rng.uniform(0.05, 0.5, channels).astype(np.float32)
        return self.node("bn", prefix=nid, eps=1e-5)

    def act(self, bits=2, kind="pact", inputs=None):
        nid = f"act{self.count + 1}"
        if kind == "dorefa":
            alpha = 1.0
        else:
            alpha = f"{nid}.alpha"
            self.params[alpha] = np.array(self.rng.uniform(0.5, 3.0), dtype=np.float32)
        return self.node("act", inputs, kind=kind, bits=bits, alpha=alpha)


def fmnist_like(rng, wbits=2, abits=2, fl=8, wq="dorefa", size=28):
    """conv-bn-act-maxpool x2, then linear-bn-act and the final linear (like tinypact's fmnist)."""
    g = GraphBuilder((1, size, size), rng, wq)
    g.conv(1, 8, bits=fl); g.bn(8); g.act(abits); g.node("maxpool", kernel=2, stride=2, padding=0)
    g.conv(8, 16, bits=wbits); g.bn(16); g.act(abits); g.node("maxpool", kernel=2, stride=2, padding=0)
    g.node("flatten")
    g.linear(16 * (size // 4) ** 2, 32, bits=wbits, bias=False); g.bn(32); g.act(abits)
    g.linear(32, 10, bits=fl)
    return g.graph, g.params


def svhn_like(rng, wbits=2, abits=2, fl=8, wq="dorefa", size=32, width=8):
    """The PACT paper's SVHN net shape: conv-bn-act and conv-bn-maxpool-act stages, then linear."""
    g = GraphBuilder((3, size, size), rng, wq)
    c = width
    g.conv(3, c, bits=fl); g.bn(c); g.act(abits)
    g.conv(c, c, bits=wbits); g.bn(c); g.node("maxpool", kernel=2, stride=2, padding=0); g.act(abits)
    g.conv(c, 2 * c, bits=wbits); g.bn(2 * c); g.act(abits)
    g.conv(2 * c, 2 * c, bits=wbits); g.bn(2 * c); g.node("maxpool", kernel=3, stride=2, padding=1); g.act(abits)
    g.node("flatten")
    side = (size // 2 - 1) // 2 + 1
    g.linear(2 * c * side * side, 10, bits=fl)
    return g.graph, g.params


def resnet_like(rng, wbits=2, abits=2, fl=8, wq="dorefa", size=16, widths=(4, 8), blocks=1,
                shortcut_bits=4, shortcut_mode="avgpool"):
    """ResNet20's structure (3x3 convs, BasicBlocks, option-A shortcuts, global avg pool), small."""
    g = GraphBuilder((3, size, size), rng, wq)
    g.conv(3, widths[0], bits=fl); g.bn(widths[0]); x = g.act(shortcut_bits)
    cin = widths[0]
    for stage, cout in enumerate(widths):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            conv_in = g.act(abits, inputs=[x]) if abits != shortcut_bits else x
            g.conv(cin, cout, stride=stride, bits=wbits, inputs=[conv_in]); g.bn(cout); g.act(abits)
            g.conv(cout, cout, bits=wbits); branch = g.bn(cout, scale=0.5)
            if stride != 1 or cin != cout:
                extra = {} if shortcut_mode == "avgpool" else {"mode": shortcut_mode}
                sc = g.node("shortcut", [x], stride=stride, pad_channels=cout - cin, **extra)
            else:
                sc = x
            g.node("add", [branch, sc])
            x = g.act(shortcut_bits)
            cin = cout
    g.node("avgpool", kernel="global", stride=1)
    g.node("flatten")
    g.linear(cin, 10, bits=fl)
    return g.graph, g.params


def write_checkpoint(path, graph, params, name="svhn"):
    meta = {"format": "tinypact-checkpoint", "version": 1, "config": {"wbits": 2},
            "model": {"name": name, "kwargs": {}}, "epoch": 1, "graph": graph}
    arrays = {f"model/{k}": v for k, v in params.items()}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def _round(v):
    return np.floor(v + 0.5)


def fake_quant_forward(graph, params, images):
    """Float64 fake-quantized forward straight from the graph (no folding, no thresholds)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    vals = {}
    for node in graph:
        op = node["op"]
        x = vals[node["inputs"][0]] if node["inputs"] else None
        if op == "input":
            y = images.astype(np.float64) * node["scale"]
            vals["input"] = y
        elif op in ("conv", "linear"):
            q = quantize_weight(p[node["weight"]], node["wq"]["kind"], node["wq"]["bits"])
            w = (2.0 * q.codes - q.n) * q.scale
            if op == "conv":
                s, pad = node["stride"], node["padding"]
                xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
                k = w.shape[2]
                oh = (xp.shape[2] - k) // s + 1
                ow = (xp.shape[3] - k) // s + 1
                y = np.zeros((x.shape[0], w.shape[0], oh, ow))
                for i in range(k):
                    for j in range(k):
                        patch = xp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
                        y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
                if node.get("bias"):
                    y += p[node["bias"]][None, :, None, None]
            else:
                y = x @ w.T + (p[node["bias"]] if node.get("bias") else 0)
        elif op == "bn":
            pre = node["prefix"]
            sh = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
            y = (x - p[pre + ".running_mean"].reshape(sh)) / np.sqrt(p[pre + ".running_var"].reshape(sh) + node["eps"])
            y = y * p[pre + ".weight"].reshape(sh) + p[pre + ".bias"].reshape(sh)
        elif op == "act":
            n = 2 ** node["bits"] - 1
            alpha = node["alpha"] if isinstance(node["alpha"], float) else float(p[node["alpha"]])
            y = _round(np.clip(x, 0, alpha) * n / alpha) * alpha / n
        elif op == "maxpool":
            k, s, pad = node["kernel"], node["stride"], node["padding"]
            xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
            oh = (xp.shape[2] - k) // s + 1
            ow = (xp.shape[3] - k) // s + 1
            y = np.full((x.shape[0], x.shape[1], oh, ow), -np.inf)
            for i in range(k):
                for j in range(k):
                    y = np.maximum(y, xp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s])
        elif op == "avgpool":
            y = x.mean(axis=(2, 3), keepdims=True)
        elif op == "flatten":
            y = x.reshape(x.shape[0], -1)
        elif op == "shortcut":
            s, pad = node["stride"], node["pad_channels"]
            if node.get("mode", "avgpool") == "avgpool":
                h, w = x.shape[2] // s * s, x.shape[3] // s * s
                y = x[:, :, :h, :w].reshape(x.shape[0], x.shape[1], h // s, s, w // s, s).mean(axis=(3, 5))
            else:
                y = x[:, :, ::s, ::s]
            y = np.pad(y, ((0, 0), (0, pad), (0, 0), (0, 0)))
        elif op == "add":
            y = vals[node["inputs"][0]] + vals[node["inputs"][1]]
        else:
            raise AssertionError(op)
        vals[node["id"]] = y
    return vals[graph[-1]["id"]]


BUILDERS = {"fmnist": fmnist_like, "svhn": svhn_like, "resnet20": resnet_like}


def _images(rng, shape, n=16):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("net", sorted(BUILDERS))
@pytest.mark.parametrize("wq,wbits,abits", [("dorefa", 2, 2), ("sawb", 3, 4), ("dorefa", 1, 3), ("sawb0", 2, 2)])
def test_export_roundtrip_engine_equals_reference_and_fake_quant(tmp_path, net, wq, wbits, abits):
    rng = np.random.default_rng(hash((net, wq, wbits)) % 2**32)
    graph, params = BUILDERS[net](rng, wbits=wbits, abits=abits, wq=wq)
    ckpt = write_checkpoint(tmp_path / "checkpoint.npz", graph, params, net)
    save_model(export_checkpoint(tmp_path), tmp_path / "m.tpq")
    model = load_model(tmp_path / "m.tpq")
    images = _images(rng, model.input_shape)
    engine = run_model(model, images, batch_size=7, collect=True)
    ref = run_reference(model, images)
    for layer in model.layers:
        got, want = engine.outputs[layer.name], ref[layer.name]
        assert got.shape == want.shape, f"{net} {layer.name}: shape {got.shape} vs reference {want.shape}"
        bad = np.argwhere(got != want)
        assert bad.size == 0, (f"{net} {wq} W{wbits}A{abits} layer {layer.name}: {len(bad)} mismatches, "
                               f"first at {bad[0]}: engine {got[tuple(bad[0])]} vs reference {want[tuple(bad[0])]}")
    float_logits = fake_quant_forward(graph, params, images)
    agree = np.mean(np.argmax(float_logits, 1) == engine.predictions)
    assert agree == 1.0, f"{net}: engine agrees with float64 fake-quant on {agree:.3f} of images"
    assert ckpt.exists()


def test_layer_shapes_and_macs(tmp_path):
    rng = np.random.default_rng(0)
    model = lower_graph(*svhn_like(rng))
    rows = layer_shapes(model)
    assert [r["kind"] for r in rows] == ["conv"] * 4 + ["linear"]
    first = rows[0]
    assert (first["ifmap_h"], first["channels"], first["num_filters"], first["abits"], first["wbits"]) == (34, 3, 8, 8, 8)
    assert first["macs"] == 32 * 32 * 8 * 27
    engine = run_model(model, _images(rng, model.input_shape, 3))
    performed = {s.name: s.macs for s in engine.stats if s.macs}
    assert performed == {r["name"]: 3 * r["macs"] for r in rows}, "executor MACs differ from the header's"


def _wide_linear(fan_in, rng):
    side = int(np.sqrt(fan_in))
    graph = [{"id": "input", "op": "input", "inputs": [], "shape": [1, side, side], "scale": 1 / 255},
             {"id": "a", "op": "act", "inputs": ["input"], "kind": "pact", "bits": 8, "alpha": 1.0},
             {"id": "f", "op": "flatten", "inputs": ["a"]},
             {"id": "fc", "op": "linear", "inputs": ["f"], "weight": "fc.weight", "bias": None,
              "wq": {"kind": "dorefa", "bits": 8}}]
    return graph, {"fc.weight": rng.normal(size=(2, side * side)).astype(np.float32)}


def test_export_refuses_accumulator_overflow():
    rng = np.random.default_rng(1)
    lower_graph(*_wide_linear(170**2, rng))  # 28900 x 255 x 255 = 1.88e9 fits in int32
    with pytest.raises(EngineError, match="overflows int32"):
        lower_graph(*_wide_linear(200**2, rng))  # 40000 x 255 x 255 = 2.6e9 does not


@pytest.mark.parametrize("change,message", [
    (lambda g, p: g[1]["wq"].update(kind="float", bits=32), "cannot run on the integer engine"),
    (lambda g, p: g[3].update(kind="float", bits=32), "float activations"),
    (lambda g, p: p.pop("conv1.weight"), "not found in the checkpoint"),
    (lambda g, p: g[1]["wq"].update(bits=6, kind="sawb"), "no SAWB coefficients"),
    (lambda g, p: g[3].update(op="dropout"), "must be quantized activations"),
    (lambda g, p: g.append({"id": "x", "op": "softmax", "inputs": [g[-1]["id"]]}), "not supported"),
    (lambda g, p: g[1].update(stride="two"), "'conv1' \\(conv\\) is malformed"),
    (lambda g, p: p.update({"bn2.running_var": np.ones(3, np.float32)}), "'bn2' \\(bn\\) is malformed"),
    (lambda g, p: p.update({"act3.alpha": np.array(-1.0, np.float32)}), "alpha must be positive"),
])
def test_export_refuses_unsupported_with_clear_message(change, message):
    graph, params = fmnist_like(np.random.default_rng(2))
    change(graph, params)
    with pytest.raises(EngineError, match=message):
        lower_graph(graph, params)
