"""End-to-end inference of the SVHN network: the integer engine at W1A1/W2A2/W4A4 against ONNX
Runtime float32 and int8 on the same network, side by side in one run, at batch 512 and batch 1.

    python benchmarks/engine.py               # batch 512 (7 rounds) and batch 1 (64 images, 7 rounds)
    python benchmarks/engine.py --quick       # 3 rounds, 16 images at batch 1
    python benchmarks/engine.py --tinypact    # add tinypact's float32 eval forward at batch 512
    python benchmarks/engine.py --calibrate 512 # engines that time bit-serial vs int8 per conv
    NUMBA_CPU_NAME=znver1 NUMBA_CPU_FEATURES=+avx2,+popcnt,... python benchmarks/engine.py
                                              # the AVX2 kernels (scalar POPCNT, vpmaddubsw) on any
                                              # AVX2 machine: "AVX2 code on <this CPU>"

Builds tinypact's `svhn` network (40x40x3, 8-bit first/last layers, DoReFa weights, PACT
activations) with randomised batch-norm statistics and alphas (speed does not depend on
training) and exports it to the integer engine at each precision. The peers run the same layers
in float (conv weights = the quantized levels times their scale, batch norm folded into the conv
bias, ReLU, max-pool, the final linear), exported to ONNX with uint8 images in (Cast, Mul by
1/255 inside the graph, as the engine takes uint8) and run by ONNX Runtime (the `onnx` extra):
float32 as exported, and int8 as `onnxruntime.quantization.quantize_static` makes it (QDQ,
per-channel int8 weights, uint8 activations, calibrated on 64 random images).

Timing: each round runs every runner once, in turn (interleaved), so drifts in background load
hit all of them, with a 0.2 s pause before each run (ONNX Runtime's threads spin after a run); each runner's best and median round are reported, with the load average
(`uptime`) before and after and the CPU's features. Batch 512 uses all cores for every runner
(Numba's and ONNX Runtime's threads); batch 1 runs one image at a time on one thread for all.
Batch 1 also reports each image's latency (p50, p99 over all rounds). Every table compares each
runner with ONNX Runtime int8 and float32.
The engines are the default `Engine(model)`: bit-serial or int8 per layer by the fixed rule for
this CPU family (`integer_engine.kernels.select`). With `--calibrate N` they are built with
`Engine(model, calibrate=N)` instead (batch 1: `calibrate=1` on one thread): each conv that can
run bit-serial or int8 is timed both ways on this CPU and keeps the faster (printed as
"kernels"). The crossover moves with the batch: on 64 images int8 won W1A1's conv2 in one run, at
512 it cost 3 ms more.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
# integer_engine first: importing it before NumPy shortens OpenBLAS's idle spin
# (integer_engine/__init__.py), which would otherwise take the cores from the next Numba kernel.
import integer_engine  # noqa: E402,F401,I001
import numba  # noqa: E402
import numpy as np  # noqa: E402

from integer_engine import cpu
from integer_engine.commands import format_layer_table
from integer_engine.executor import Engine
from integer_engine.export import lower_graph
from integer_engine.interop.graph import ONNX_IR_VERSION, ONNX_OPSET
from tinypact.models import build_model, randomize_statistics
from tinypact.quant import Policy
from tinypact.tensor import Tensor, no_grad

PRECISIONS = (1, 2, 4)
# The runtimes every engine is compared with, in each table.
PEERS = ("onnxruntime int8 (QDQ)", "onnxruntime float32")


def load_average() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def float_onnx(model, path: str) -> None:
    """The lowered integer model's network in float32 ONNX (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    nodes.append(helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Mul", ["pixels", const("inv255", 1 / 255)], ["input"]))
    for layer in model.layers:
        a, arr = layer.attrs, layer.arrays
        x, y = a["inputs"][0], layer.name
        if a["kind"] in ("conv", "linear"):
            levels = 2 * arr["weight"].astype(np.float32) - a["n_w"]
            fold = arr["bn_scale"] * float(arr["scale"][0])
            weight = levels * fold.reshape(-1, *[1] * (levels.ndim - 1))
            bias = arr["bias"] * arr["bn_scale"] + arr["bn_shift"]
            out = y if a["output"] == "logits" else y + "_pre"
            if a["kind"] == "conv":
                p = a["padding"]
                nodes.append(helper.make_node("Conv", [x, const(y + "_w", weight), const(y + "_b", bias)], [out],
                                              kernel_shape=list(a["kernel"]), strides=[a["stride"]] * 2,
                                              pads=[p] * 4))
            else:
                nodes.append(helper.make_node("Gemm", [x, const(y + "_w", weight), const(y + "_b", bias)], [out],
                                              transB=1))
            if a["output"] != "logits":
                nodes.append(helper.make_node("Relu", [out], [y]))
        elif a["kind"] == "maxpool":
            p = a["padding"]
            nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[a["kernel"]] * 2,
                                          strides=[a["stride"]] * 2, pads=[p] * 4))
        elif a["kind"] == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [y]))
        else:
            raise SystemExit(f"float_onnx: layer kind {a['kind']!r} is not in the SVHN network")
    shape = ["batch", *model.input_shape]
    graph = helper.make_graph(nodes, "svhn", [helper.make_tensor_value_info("images", TensorProto.UINT8, shape)],
                              [helper.make_tensor_value_info(model.layers[-1].name, TensorProto.FLOAT, None)],
                              inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    proto.ir_version = ONNX_IR_VERSION  # as the exporter pins it: older runtimes refuse newer IR
    onnx.save(proto, path)


def int8_onnx(float_path: str, path: str, calibration: np.ndarray) -> None:
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process: the graph is already plain

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(float_path, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    import onnx

    proto = onnx.load(path)
    if proto.ir_version > ONNX_IR_VERSION:  # the quantizer may write its own onnx's newest
        proto.ir_version = ONNX_IR_VERSION
        onnx.save(proto, path)


def ort_session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images})[0]


def interleaved(runners: dict, rounds: int, settle: float = 0.2, on_warm=None) -> dict:
    """{name: (best, median) seconds}: each round times every runner once, in turn, `settle`
    seconds after the previous one: ONNX Runtime's pool threads spin after a run (its default)
    and took the cores from whichever runner came next (the engine's W1A1, after ORT float32:
    10,500 images/s at batch 512 without the pause, 15,600 with it, same machine, same minute).
    `on_warm` is called once after the warm-up runs."""
    times = {name: [] for name in runners}
    for fn in runners.values():
        fn()  # compile / warm caches outside the timing
    if on_warm:
        on_warm()
    for _ in range(rounds):
        for name, fn in runners.items():
            time.sleep(settle)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), float(np.median(t))) for name, t in times.items()}


def report(title: str, results: dict, images: int, peers: tuple[str, ...],
           latencies: dict | None = None) -> None:
    """images/s (best, median), the spread (median / best time), the ratio to each peer's speed,
    best against best and median against median, and with `latencies` ({name: seconds per image})
    the per-image latency p50 and p99 in microseconds."""
    print(f"\n{title}")
    header = "".join(f"   x {peer}: best, median" for peer in peers)
    latency_header = f" {'p50 us':>8s} {'p99 us':>8s}" if latencies else ""
    print(f"  {'runner':28s} {'images/s best':>13s} {'median':>9s} {'med/best':>8s}{latency_header}{header}")
    for name, (best, median) in results.items():
        ratios = "".join(f"   {results[peer][0] / best:{len(peer) + 6}.2f}, {results[peer][1] / median:5.2f}"
                         for peer in peers)
        latency = ""
        if latencies:
            p50, p99 = np.percentile(latencies[name], [50, 99]) * 1e6
            latency = f" {p50:8.0f} {p99:8.0f}"
        print(f"  {name:28s} {images / best:13.1f} {images / median:9.1f} {median / best:8.2f}{latency}{ratios}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="batch size of the large-batch runs")
    parser.add_argument("--single", type=int, default=64, help="images run one at a time for batch 1")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 16 images at batch 1")
    parser.add_argument("--tinypact", action="store_true", help="add tinypact's float32 eval at batch 512")
    parser.add_argument("--layers", action="store_true", help="print the engine's per-layer times")
    parser.add_argument("--calibrate", type=int, default=0,
                        help="images for a per-layer bit-serial vs int8 timing (default 0: the default "
                             "Engine(model), a fixed rule per CPU family)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.single = 3, 16

    threads = numba.get_num_threads()
    print(cpu.describe())
    print(f"start: {load_average()}")
    networks = {bits: randomize_statistics(build_model("svhn", Policy(wbits=bits, abits=bits)), biases=False)
                for bits in PRECISIONS}
    models = {bits: lower_graph(net.graph(), net.state_dict()) for bits, net in networks.items()}
    # Each engine is calibrated the way it will run: the large batch on all threads,
    # one image on one thread for batch 1 (the crossover moves with both).
    engines = {bits: Engine(model, calibrate=args.calibrate) for bits, model in models.items()}
    numba.set_num_threads(1)
    single_engines = {bits: Engine(model, calibrate=args.calibrate and 1) for bits, model in models.items()}
    numba.set_num_threads(threads)
    for label, group in (("batch 512", engines), ("batch 1", single_engines)):
        for bits, engine in group.items():
            chosen = " ".join(f"{name}:{comp.method}" + (
                "({:.2f}/{:.2f})".format(*(1e3 * s for s in engine.calibration[name])) if name in engine.calibration
                else "") for name, comp in engine.compute.items())
            print(f"W{bits}A{bits} {label} kernels ({'timed: network ms bit-serial/int8' if args.calibrate else 'fixed rule'}): "
                  f"{chosen}")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (args.images, *networks[2].input_shape), dtype=np.uint8)
    single = images[:args.single]

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise SystemExit("the peers need ONNX Runtime: pip install onnx onnxruntime (the `onnx` extra)")
    with tempfile.TemporaryDirectory() as tmp:
        float_path, int8_path = os.path.join(tmp, "svhn_float.onnx"), os.path.join(tmp, "svhn_int8.onnx")
        float_onnx(engines[2].model, float_path)
        int8_onnx(float_path, int8_path, rng.integers(0, 256, (64, *networks[2].input_shape), dtype=np.uint8))
        sessions = {threads: {"onnxruntime int8 (QDQ)": ort_session(int8_path, threads),
                              "onnxruntime float32": ort_session(float_path, threads)},
                    1: {"onnxruntime int8 (QDQ)": ort_session(int8_path, 1),
                        "onnxruntime float32": ort_session(float_path, 1)}}

    # Batch 512, all threads.
    runners = {f"integer_engine W{b}A{b}": (lambda e=engine: e.run(images)) for b, engine in engines.items()}
    runners.update({name: (lambda f=run: f(images)) for name, run in sessions[threads].items()})
    if args.tinypact:
        def run_tinypact(net=networks[2]):
            with no_grad():
                return net(Tensor(images.astype(np.float32) / np.float32(255))).data
        runners["tinypact float32 eval W2A2"] = run_tinypact
    large = interleaved(runners, args.rounds)
    report(f"batch {args.images}, {threads} threads, best and median of {args.rounds} interleaved rounds "
           f"({load_average()})", large, args.images, PEERS)

    # Batch 1, one thread for everyone; each image's latency recorded (all rounds, after warm-up).
    latencies = {}

    def one_at_a_time(name, fn):
        def run():
            times = latencies.setdefault(name, [])
            for i in range(len(single)):
                start = time.perf_counter()
                fn(single[i:i + 1])
                times.append(time.perf_counter() - start)
        return run

    numba.set_num_threads(1)
    try:
        runners = {f"integer_engine W{b}A{b}": engine.run for b, engine in single_engines.items()}
        runners.update(sessions[1])
        runners = {name: one_at_a_time(name, run) for name, run in runners.items()}
        small = interleaved(runners, args.rounds, on_warm=latencies.clear)
    finally:
        numba.set_num_threads(threads)
    report(f"batch 1 ({args.single} images one at a time), 1 thread, best and median of {args.rounds} "
           f"interleaved rounds, latency per image over all rounds ({load_average()})", small, args.single,
           PEERS, latencies)

    if args.layers:
        for bits, engine in engines.items():
            result = engine.run(images)
            print(f"\nengine W{bits}A{bits} per layer, batch {args.images}:")
            print(format_layer_table(result.stats, args.images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
