"""Make the small Brevitas-exported QONNX models that tests/test_interop_import.py imports.

Needs torch and Brevitas, which are not dependencies of this project; use a separate venv:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch==2.13.0 brevitas==0.13.4 onnxoptimizer onnx qonnx
    .venv-fixtures/bin/python scripts/make_brevitas_fixtures.py [--out tests/fixtures/brevitas]

(Brevitas needs `onnxoptimizer` to export but does not declare it.) Each network is built with
a fixed seed, its batch-norm statistics randomised and its activation scales calibrated on a few
random batches (so every layer's codes spread over all levels), then exported with
`brevitas.export.export_qonnx` and saved as one self-contained file (the external `.onnx.data`
that the exporter writes is folded in). The fixtures:

- `cnv_w4a4.onnx`: 1x28x28 -> QuantIdentity (unsigned 8-bit) -> QuantConv 3x3 (4-bit weights,
  per-tensor scale) -> BatchNorm -> QuantReLU 4-bit -> MaxPool -> QuantConv 3x3 (4-bit, per-channel
  scales) -> BatchNorm -> QuantReLU 4-bit -> Flatten -> QuantLinear 10 (8-bit weights, bias);
  every Quant with Brevitas's ROUND (half to even).
- `cnv_fixed_point.onnx`: the same layers without batch norm, every scale a power of two
  (Brevitas's FixedPoint quantizers), so that many activations land exactly on rounding ties;
- `cnv_fixed_point_half_up.onnx`: that graph with the activation Quant nodes' rounding_mode set
  to HALF_UP (qonnx's half-up rule), as an exporter with round-half-up activations writes it:
  its thresholds differ from the ROUND (half to even) model's at the ties.
- `resnet_w4a4.onnx`: 1x16x16 -> Brevitas's default (signed 8-bit) QuantIdentity -> conv W4A4
  -> two ResNet basic blocks (residual adds of quantized tensors: the branch's batch norm output
  through a signed 4-bit QuantIdentity, then QuantReLU; the second block strided with a 1x1
  conv shortcut) -> global average pool -> QuantLinear 10 (8-bit, bias).
- `bnn_w1a1.onnx`: 1x12x12 -> unsigned 8-bit QuantIdentity -> two unpadded 3x3 convs with binary
  weights, each BN -> bipolar (+-1) activation (BipolarQuant) -> max-pool -> 1x1 conv W4A4 ->
  2x2 average pool -> QuantLinear 10 (binary weights, bias).
- `mlp_w2a2.onnx`: 1x8x8 -> QuantIdentity (unsigned 8-bit) -> Flatten -> QuantLinear 32 (2-bit
  weights) -> BatchNorm1d -> QuantReLU 2-bit -> QuantLinear 16 (1-bit binary weights: BipolarQuant)
  -> QuantReLU 3-bit -> QuantLinear 10 (8-bit).
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import onnx
import torch
from brevitas import nn as qnn
from brevitas.export import export_qonnx
from brevitas.quant import (Int8WeightPerChannelFloat, Int8WeightPerTensorFixedPoint, Int8WeightPerTensorFloat,
                            SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst,
                            Uint8ActPerTensorFixedPoint, Uint8ActPerTensorFloat)
from torch import nn


class InputQuant(Uint8ActPerTensorFloat):
    """Unsigned 8-bit input quantizer (Brevitas's default QuantIdentity is signed, which a uint8
    pixel input cannot use)."""


def cnv() -> nn.Module:
    return nn.Sequential(
        qnn.QuantIdentity(act_quant=InputQuant, return_quant_tensor=True),
        qnn.QuantConv2d(1, 8, 3, weight_bit_width=4, weight_quant=Int8WeightPerTensorFloat, bias=False),
        nn.BatchNorm2d(8),
        qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
        nn.MaxPool2d(2),
        qnn.QuantConv2d(8, 16, 3, weight_bit_width=4, weight_quant=Int8WeightPerChannelFloat, bias=False),
        nn.BatchNorm2d(16),
        qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
        nn.Flatten(),
        qnn.QuantLinear(16 * 11 * 11, 10, weight_bit_width=8, bias=True),
    )


def cnv_fixed_point() -> nn.Module:
    def act(bits: int) -> nn.Module:
        return qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits, return_quant_tensor=True)

    def conv(cin: int, cout: int) -> nn.Module:
        return qnn.QuantConv2d(cin, cout, 3, weight_bit_width=4, weight_quant=Int8WeightPerTensorFixedPoint,
                               bias=False)

    return nn.Sequential(
        qnn.QuantIdentity(act_quant=Uint8ActPerTensorFixedPoint, return_quant_tensor=True),
        conv(1, 8), act(4), nn.MaxPool2d(2), conv(8, 16), act(3), nn.Flatten(),
        qnn.QuantLinear(16 * 11 * 11, 10, weight_bit_width=8, weight_quant=Int8WeightPerTensorFixedPoint, bias=False),
    )


def mlp() -> nn.Module:
    return nn.Sequential(
        qnn.QuantIdentity(act_quant=InputQuant, return_quant_tensor=True),
        nn.Flatten(),
        qnn.QuantLinear(64, 32, weight_bit_width=2, bias=False),
        nn.BatchNorm1d(32),
        qnn.QuantReLU(bit_width=2, return_quant_tensor=True),
        qnn.QuantLinear(32, 16, weight_quant=SignedBinaryWeightPerTensorConst, bias=True),
        qnn.QuantReLU(bit_width=3, return_quant_tensor=True),
        qnn.QuantLinear(16, 10, weight_bit_width=8, bias=True),
    )


class ResidualBlock(nn.Module):
    """A ResNet basic block as FINN-style Brevitas models write it: both inputs of the add are
    quantized (the branch's batch norm output by a signed QuantIdentity), the sum goes through a
    QuantReLU (each quantizer returns dequantized floats: the add of two different scales). With `downsample`, the shortcut is a strided 1x1 QuantConv + batch norm + signed
    QuantIdentity too."""

    def __init__(self, cin: int, cout: int, stride: int, bits: int):
        super().__init__()
        self.conv1 = qnn.QuantConv2d(cin, cout, 3, stride=stride, padding=1, weight_bit_width=bits, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = qnn.QuantReLU(bit_width=bits)
        self.conv2 = qnn.QuantConv2d(cout, cout, 3, padding=1, weight_bit_width=bits, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.quant2 = qnn.QuantIdentity(bit_width=bits)  # signed
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                qnn.QuantConv2d(cin, cout, 1, stride=stride, weight_bit_width=bits, bias=False),
                nn.BatchNorm2d(cout), qnn.QuantIdentity(bit_width=bits))
        self.relu_out = qnn.QuantReLU(bit_width=bits)

    def forward(self, x):
        y = self.quant2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        return self.relu_out(y + (x if self.shortcut is None else self.shortcut(x)))


def resnet_style() -> nn.Module:
    """1x16x16 -> signed 8-bit input QuantIdentity (Brevitas's default) -> conv 3x3 W4 + BN +
    QuantReLU A4 -> residual block (identity shortcut) -> residual block (stride 2, 1x1 conv
    shortcut) -> global average pool -> QuantLinear 10 (8-bit weights, bias)."""
    return nn.Sequential(
        qnn.QuantIdentity(return_quant_tensor=True),
        qnn.QuantConv2d(1, 8, 3, padding=1, weight_bit_width=4, bias=False),
        nn.BatchNorm2d(8),
        qnn.QuantReLU(bit_width=4),
        ResidualBlock(8, 8, 1, 4),
        ResidualBlock(8, 16, 2, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        qnn.QuantLinear(16, 10, weight_bit_width=8, bias=True),
    )


def bnn() -> nn.Module:
    """1x12x12 -> unsigned 8-bit input QuantIdentity -> conv 3x3 (binary weights) -> BN -> bipolar
    activation -> conv 3x3 (binary weights, unpadded: the source pads +-1 inputs with 0) -> BN ->
    bipolar activation -> max-pool -> conv 1x1 W4 (on the +-1 codes) -> BN -> QuantReLU A4 ->
    average pool 2x2 -> QuantLinear 10 (binary weights, bias), as FINN's binarized networks are
    built."""
    def binary_conv(cin: int, cout: int, k: int) -> nn.Module:
        return qnn.QuantConv2d(cin, cout, k, weight_quant=SignedBinaryWeightPerTensorConst, bias=False)

    def bipolar() -> nn.Module:
        return qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst)

    return nn.Sequential(
        qnn.QuantIdentity(act_quant=InputQuant),
        binary_conv(1, 16, 3), nn.BatchNorm2d(16), bipolar(),
        binary_conv(16, 16, 3), nn.BatchNorm2d(16), bipolar(),
        nn.MaxPool2d(2),
        qnn.QuantConv2d(16, 16, 1, weight_bit_width=4, bias=False), nn.BatchNorm2d(16), qnn.QuantReLU(bit_width=4),
        nn.AvgPool2d(2), nn.Flatten(),
        qnn.QuantLinear(16 * 2 * 2, 10, weight_quant=SignedBinaryWeightPerTensorConst, bias=True),
    )


def prepare(model: nn.Module, shape: tuple, seed: int) -> nn.Module:
    """Random batch-norm statistics (some negative gammas), then calibrate the learned activation
    scales with a few training-mode passes on random pixel images x = p / 255."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = module.num_features
            module.weight.data = torch.randn(c, generator=generator)
            module.bias.data = torch.randn(c, generator=generator) * 0.5
            module.running_mean = torch.randn(c, generator=generator) * 0.5
            module.running_var = torch.rand(c, generator=generator) + 0.2
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randint(0, 256, (32, *shape), generator=generator).float() / 255)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.eval()  # keep the randomised statistics, not the calibration batches'
    return model.eval()


def export(model: nn.Module, shape: tuple, path: str) -> onnx.ModelProto:
    """export_qonnx to a temporary directory, then one self-contained file at `path`."""
    with tempfile.TemporaryDirectory() as tmp:
        exported = os.path.join(tmp, "model.onnx")
        export_qonnx(model, torch.zeros(1, *shape), exported)
        proto = onnx.load(exported)  # reads the external .onnx.data beside it, if any
    onnx.save(proto, path)
    return proto


def half_up(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The activation Quant nodes (those not fed by an initializer) with rounding_mode HALF_UP."""
    weights = {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Quant" and node.input[0] not in weights:
            for attr in node.attribute:
                if attr.name == "rounding_mode":
                    attr.s = b"HALF_UP"
    return proto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("tests", "fixtures", "brevitas"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    export(prepare(cnv(), (1, 28, 28), 1), (1, 28, 28), os.path.join(args.out, "cnv_w4a4.onnx"))
    proto = export(prepare(cnv_fixed_point(), (1, 28, 28), 3), (1, 28, 28),
                   os.path.join(args.out, "cnv_fixed_point.onnx"))
    onnx.save(half_up(proto), os.path.join(args.out, "cnv_fixed_point_half_up.onnx"))
    export(prepare(mlp(), (1, 8, 8), 2), (1, 8, 8), os.path.join(args.out, "mlp_w2a2.onnx"))
    export(prepare(resnet_style(), (1, 16, 16), 4), (1, 16, 16), os.path.join(args.out, "resnet_w4a4.onnx"))
    export(prepare(bnn(), (1, 12, 12), 5), (1, 12, 12), os.path.join(args.out, "bnn_w1a1.onnx"))
    for name in sorted(os.listdir(args.out)):
        print(f"wrote {os.path.join(args.out, name)} ({os.path.getsize(os.path.join(args.out, name)):,} bytes)")


if __name__ == "__main__":
    np.random.seed(0)
    main()
