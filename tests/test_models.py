"""The networks: shapes at several precision policies, MACs, and the checkpoint graph checked
against forward by re-running the graph + state_dict in plain NumPy (what integer_engine does)."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from tinypact.models import (MODEL_FOR_DATASET, MODELS, build_model, graph_shapes,
                             input_padding, randomize_statistics)
from tinypact.quant import (SAWB_COEFFICIENTS, SAWB_ZERO_ALIGNED_COEFFICIENTS, ActQuant, Policy,
                            alpha_parameters)
from tinypact.tensor import Tensor, no_grad

POLICIES = [
    Policy(),
    Policy(wbits=2, abits=2, weight_quant="sawb", act_quant="pact"),
    Policy(wbits=4, abits=3, weight_quant="dorefa", act_quant="relu"),
    Policy(wbits=1, abits=4, weight_quant="dorefa", act_quant="dorefa", first_last_bits=32,
           shortcut_bits=32),
    Policy(wbits=2, abits=2, weight_quant="sawb0", act_quant="pact+", shortcut_bits=2),
]


# ============================================================ the graph, re-run in plain NumPy
def quantize_weight_reference(w: np.ndarray, kind: str, bits: int) -> np.ndarray:
    """The reference page's weight formulas, in float64, written independently of tinypact."""
    if kind == "float" or bits == 32:
        return w
    if kind == "dorefa":
        if bits == 1:
            return np.where(w >= 0, 1.0, -1.0) * np.mean(np.abs(w))
        n = 2 ** bits - 1
        t = np.tanh(w)
        u = t / np.abs(t).max() * 0.5 + 0.5
        return 2 * np.floor(u * n + 0.5) / n - 1
    table = SAWB_ZERO_ALIGNED_COEFFICIENTS if kind == "sawb0" else SAWB_COEFFICIENTS
    c1, c2 = table[bits]
    alpha = c1 * np.sqrt(np.mean(w ** 2)) - c2 * np.mean(np.abs(w))
    alpha = alpha if alpha > 0 else np.abs(w).max()
    n = 2 ** bits - (2 if kind == "sawb0" else 1)
    u = np.clip(w / alpha, -1, 1) * 0.5 + 0.5
    return (2 * np.floor(u * n + 0.5) / n - 1) * alpha


def windows(x: np.ndarray, kernel: int, stride: int, padding: int, fill: float) -> np.ndarray:
    """(N, C, Ho, Wo, k, k) views of the padded input."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=fill)
    return sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]


def run_graph(graph: list[dict], state: dict, x: np.ndarray) -> np.ndarray:
    values = {}
    for node in graph:
        op, inputs = node["op"], [values[i] for i in node["inputs"]]
        v = inputs[0] if inputs else None
        if op == "input":
            out = x
        elif op == "conv":
            w = quantize_weight_reference(state[node["weight"]], **node["wq"])
            win = windows(v, w.shape[2], node["stride"], node["padding"], 0.0)
            out = np.einsum("nchwij,ocij->nohw", win, w)
            if node["bias"] is not None:
                out = out + state[node["bias"]][None, :, None, None]
        elif op == "linear":
            w = quantize_weight_reference(state[node["weight"]], **node["wq"])
            out = v @ w.T + (0 if node["bias"] is None else state[node["bias"]])
        elif op == "bn":
            p = node["prefix"]
            scale = state[f"{p}.weight"] / np.sqrt(state[f"{p}.running_var"] + node["eps"])
            shift = state[f"{p}.bias"] - state[f"{p}.running_mean"] * scale
            out = v * scale[None, :, None, None] + shift[None, :, None, None]
        elif op == "act":
            if node["kind"] == "float":
                out = np.maximum(v, 0)
            else:
                alpha = node["alpha"]
                alpha = float(state[alpha]) if isinstance(alpha, str) else float(alpha)
                out = np.clip(v, 0, alpha)
                if node["bits"] != 32:
                    n = 2 ** node["bits"] - 1
                    out = np.floor(out * n / alpha + 0.5) * alpha / n
        elif op == "maxpool":
            out = windows(v, node["kernel"], node["stride"], node["padding"], -np.inf).max((4, 5))
        elif op == "avgpool":
            if node["kernel"] == "global":
                out = v.mean(axis=(2, 3), keepdims=True)
            else:
                out = windows(v, node["kernel"], node["stride"], 0, 0.0).mean((4, 5))
        elif op == "flatten":
            out = v.reshape(len(v), -1)
        elif op == "add":
            out = inputs[0] + inputs[1]
        elif op == "shortcut":
            s = node["stride"]
            pooled = windows(v, s, s, 0, 0.0).mean((4, 5))
            out = np.pad(pooled, ((0, 0), (0, node["pad_channels"]), (0, 0), (0, 0)))
        else:
            raise AssertionError(f"unknown op {op}")
        values[node["id"]] = out
    return values[graph[-1]["id"]]


def randomize_for_comparison(model, rng) -> None:
    """float64 everywhere (so both sides round the same values), non-trivial BN statistics and
    activation ranges that put activations on many levels."""
    for _, p in model.named_parameters():
        p.data = p.data.astype(np.float64)
    for name, module in model.named_modules():
        if isinstance(module, ActQuant):
            if module.kind in ("pact", "pact+"):
                module.alpha.data = np.asarray(rng.uniform(0.5, 3.0))
            if module.kind == "relu":
                module._buffers["running_max"] = np.asarray(rng.uniform(0.5, 3.0))
        if "running_mean" in module._buffers:
            c = module.running_mean.shape[0]
            module._buffers["running_mean"] = rng.normal(0, 0.5, c)
            module._buffers["running_var"] = rng.uniform(0.5, 2.0, c)
            module.weight.data = rng.uniform(0.5, 1.5, c)
            module.bias.data = rng.normal(0.3, 0.3, c)


# Every policy on the cheap fmnist and on resnet20 (residual stream, shortcuts); two on svhn;
# then each network on another data set's images (channels, size: the stem's extra padding).
GRAPH_CASES = ([("fmnist", p, {}) for p in POLICIES] + [("resnet20", p, {}) for p in POLICIES]
               + [("svhn", p, {}) for p in POLICIES[1:3]]
               + [("resnet20", POLICIES[1], {"in_channels": 1, "image_size": 28}),
                  ("resnet20", POLICIES[4], {"in_channels": 1, "image_size": 28}),
                  ("svhn", POLICIES[1], {"in_channels": 1, "image_size": 28}),
                  ("svhn", POLICIES[2], {"in_channels": 3, "image_size": 32}),
                  ("fmnist", POLICIES[1], {"in_channels": 3, "image_size": 32})])


def _case_id(name: str, policy: Policy, options: dict) -> str:
    shape = f"-{options['in_channels']}x{options['image_size']}" if options else ""
    return f"{name}{shape}-{policy.describe().replace(' ', '_')}"


@pytest.mark.parametrize("name, policy, options", GRAPH_CASES,
                         ids=[_case_id(*case) for case in GRAPH_CASES])
def test_graph_describes_exactly_what_forward_computes(name, policy, options):
    rng = np.random.default_rng(7)
    model = build_model(name, policy, **options)
    randomize_for_comparison(model, rng)
    model.eval()
    x = rng.integers(0, 256, (2, *model.input_shape)).astype(np.float64) / 255
    with no_grad():
        got = model(Tensor(x)).data
    graph = model.graph()
    state = {k: np.asarray(v, dtype=np.float64) for k, v in model.state_dict().items()}
    expected = run_graph(graph, state, x)
    assert got.shape == expected.shape == (2, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9,
                               err_msg=f"{name} at {policy.describe()}: forward != graph")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_graph_is_well_formed_and_covers_the_state_dict(name):
    model = build_model(name, Policy(wbits=2, abits=3, act_quant="relu"))
    graph = model.graph()
    ids = [node["id"] for node in graph]
    assert len(set(ids)) == len(ids), "node ids must be unique"
    assert graph[0] == {"id": "input", "op": "input", "inputs": [],
                        "shape": list(model.input_shape), "scale": 1 / 255}
    seen, referenced = set(), set()
    for node in graph:
        assert all(i in seen for i in node["inputs"]), f"{node['id']} uses a later node"
        seen.add(node["id"])
        for field in ("weight", "bias", "alpha"):
            if isinstance(node.get(field), str):
                referenced.add(node[field])
        if node["op"] == "bn":
            referenced.update(f"{node['prefix']}.{k}"
                              for k in ("weight", "bias", "running_mean", "running_var"))
    state = model.state_dict()
    assert referenced == set(state), (f"graph misses {sorted(set(state) - referenced)}, "
                                      f"refers to unknown {sorted(referenced - set(state))}")
    assert graph_shapes(graph, state)[ids[-1]] == (10,)


@pytest.mark.parametrize("name, policy", [("fmnist", POLICIES[1]), ("fmnist", POLICIES[2]),
                                          ("svhn", POLICIES[2]), ("resnet20", POLICIES[1])],
                         ids=["fmnist-sawb-pact", "fmnist-dorefa-relu", "svhn-dorefa-relu",
                              "resnet20-sawb-pact"])
def test_training_step_shapes_and_gradients(name, policy):
    model = build_model(name, policy, num_classes=7)
    x = Tensor(np.random.default_rng(0).random((2, *model.input_shape), dtype=np.float32))
    out = model(x)
    assert out.shape == (2, 7) and out.dtype == np.float32
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    if policy.act_quant == "pact":
        assert len(alpha_parameters(model)) > 0


def test_first_and_last_layers_follow_first_last_bits():
    policy = Policy(wbits=2, abits=2, first_last_bits=8)
    for name in MODELS:
        convs = [n for n in build_model(name, policy).graph() if n["op"] in ("conv", "linear")]
        assert convs[0]["wq"]["bits"] == 8 and convs[-1]["wq"]["bits"] == 8, name
        assert all(n["wq"]["bits"] == 2 for n in convs[1:-1]), name


def test_resnet_residual_stream_precision():
    graph = build_model("resnet20", Policy(wbits=2, abits=2, shortcut_bits=8)).graph()
    acts = {n["id"]: n["bits"] for n in graph if n["op"] == "act"}
    assert acts["act0"] == 8 and acts["layer2.0.out_act"] == 8
    assert acts["layer2.0.in_act"] == 2 and acts["layer2.0.act1"] == 2
    shortcut = [n for n in graph if n["op"] == "shortcut"]
    assert [(n["id"], n["stride"], n["pad_channels"]) for n in shortcut] == [
        ("layer2.0.shortcut", 2, 16), ("layer3.0.shortcut", 2, 32)]
    same = build_model("resnet20", Policy(wbits=2, abits=8, shortcut_bits=8)).graph()
    assert not any(n["id"].endswith("in_act") for n in same)


def test_last_layer_input_precision():
    """docs/ARCHITECTURE.md "Precision policy": the activation feeding the last layer is at abits
    in fmnist and svhn, and at shortcut_bits in resnet20 (the last block's out_act, globally
    pooled), where it belongs to the residual stream."""
    policy = Policy(wbits=2, abits=2, shortcut_bits=8)
    for name, bits in (("fmnist", 2), ("svhn", 2), ("resnet20", 8)):
        graph = build_model(name, policy).graph()
        by_id = {n["id"]: n for n in graph}
        node = by_id[graph[-1]["inputs"][0]]
        while node["op"] != "act":  # back through flatten / pooling to the activation
            node = by_id[node["inputs"][0]]
        assert node["bits"] == bits, f"{name}: last layer fed by {node['id']} at {node['bits']} bits"


@pytest.mark.parametrize("name, low, high", [("svhn", 41e6, 43e6), ("resnet20", 40e6, 42e6),
                                             ("fmnist", 1.5e6, 2.5e6)])
def test_macs_per_image(name, low, high):
    macs = build_model(name, Policy()).macs()
    assert low <= macs <= high, f"{name}: {macs / 1e6:.2f} M MACs, expected {low / 1e6}-{high / 1e6} M"


def test_build_model_by_dataset_spec_and_errors():
    assert MODEL_FOR_DATASET == {"sample": "fmnist", "fashion-mnist": "fmnist", "svhn": "svhn",
                                 "cifar10": "resnet20"}
    model = build_model("svhn", {"wbits": 3, "abits": 3})
    spec = model.spec()
    again = build_model(spec["name"], **spec["kwargs"])
    assert again.policy == model.policy and list(again.state_dict()) == list(model.state_dict())
    assert build_model("fmnist").input_shape == (1, 28, 28)
    wide = build_model("fmnist", None, 10, width=8)
    assert wide.spec()["kwargs"]["width"] == 8
    assert build_model("fmnist", **wide.spec()["kwargs"]).conv0.out_channels == 8
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16")


@pytest.mark.parametrize("name, channels, size, padding", [
    ("resnet20", 1, 28, 2), ("resnet20", 3, 32, 0), ("resnet20", 3, 40, 0), ("svhn", 1, 28, 6),
    ("svhn", 3, 32, 4), ("svhn", 3, 40, 0), ("fmnist", 3, 32, 0), ("fmnist", 1, 28, 0),
    ("fmnist", 3, 40, 0)])
def test_images_are_brought_to_the_network_by_one_rule(name, channels, size, padding):
    """The stem takes the images' channels; smaller images are zero-padded on every side to the
    native size, folded into the stem conv's padding, so zero-padding the images by hand and
    running the native network with the same weights gives the same logits."""
    policy = Policy(wbits=2, abits=2, weight_quant="sawb")
    model = build_model(name, policy, in_channels=channels, image_size=size)
    assert model.input_shape == (channels, size, size) and model.stem_padding == padding
    assert model.graph()[0]["shape"] == [channels, size, size]
    native = build_model(name, policy, in_channels=channels,
                         image_size=max(size, model.native_shape[1]))
    assert native.stem_padding == 0
    randomize_statistics(model, seed=1)
    native.load_state_dict(model.state_dict())
    native.eval()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, channels, size, size)).astype(np.float32)
    padded = np.pad(pixels, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    with no_grad():
        got = model(Tensor(pixels / 255)).data
        expected = native(Tensor(padded / 255)).data
    np.testing.assert_array_equal(got, expected)
    again = build_model(model.spec()["name"], **model.spec()["kwargs"])
    assert again.input_shape == model.input_shape and again.stem_padding == padding


def test_images_that_cannot_be_brought_to_the_network_are_one_line_errors():
    with pytest.raises(ValueError, match="at most 40x40 pixels"):
        build_model("svhn", in_channels=3, image_size=48)
    with pytest.raises(ValueError, match="cannot be padded equally"):
        build_model("resnet20", in_channels=1, image_size=27)
    assert input_padding("resnet20", 32, 28, True) == 2
    assert build_model("fmnist").spec()["kwargs"] == {"policy": Policy().to_dict(),
                                                       "num_classes": 10, "width": 16}


def test_randomize_statistics_spreads_an_untrained_model():
    model = randomize_statistics(build_model("fmnist", Policy(wbits=2, abits=2)), seed=3)
    state = model.state_dict()
    assert not model.training
    variances = np.concatenate([v.ravel() for k, v in state.items() if k.endswith("running_var")])
    alphas = [float(v) for k, v in state.items() if k.endswith(".alpha")]
    assert variances.size and np.all((variances >= 0.2) & (variances <= 2.0)), variances
    assert alphas and all(0.5 <= a <= 2.0 for a in alphas), alphas
    assert np.any(state["fc.bias"] != 0), "biases were left at their initial zeros"
    again = randomize_statistics(build_model("fmnist", Policy(wbits=2, abits=2)), seed=3)
    randomized = [k for k in state if k.endswith(("running_var", "running_mean", ".alpha", "bias"))]
    assert all(np.array_equal(state[k], again.state_dict()[k]) for k in randomized), "not reproducible"
