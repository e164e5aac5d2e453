"""The central promise: the integer engine computes exactly what tinypact's trained model computes.

Random small tinypact networks (`random_networks.py`: conv and linear layers, every weight
quantizer at 1-8 bits, PACT / DoReFa / quantized-ReLU activations at 1-8 bits, batch norms with
negative, zero and tiny gammas and tiny variances, max and average pooling, residual blocks) are
exported and run by the engine; every layer's output must equal tinypact's eval forward of the
same graph node (codes, and the float32 logits bit for bit), and the predictions must agree.
Half the examples use binary-fraction constants that put pre-activations exactly on rounding ties.
`scripts/soak_exact.py` runs the same check on many thousands of networks.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from integer_engine.export import lower_graph
from integer_engine.verify import verify_against_checkpoint
from random_networks import random_network
from tinypact.data.transforms import to_float
from tinypact.quant import quantize_input


def check_network(seed: int, ties: bool) -> None:
    """Export, run, and compare one random network layer by layer (assert with a full story)."""
    net, images = random_network(np.random.default_rng(seed), ties=ties)
    model = lower_graph(net.graph(), net.state_dict())
    report = verify_against_checkpoint(model, None, images, network=net)
    compared = ", ".join(report.mismatches)
    assert report.ok, (f"seed={seed} ties={ties}: engine != tinypact in layers {report.first_mismatch} "
                       f"(compared: {compared})\n{net!r}")
    assert np.array_equal(report.engine_predictions, report.other_predictions)
    assert model.layers[-1].name in report.mismatches, f"the logits were not compared ({compared})"


@settings(max_examples=300)
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_engine_equals_tinypact_on_random_networks(seed, ties):
    check_network(seed, ties)


def test_every_pixel_is_its_own_input_code():
    """The data pipeline's x = p / 255 (float32) quantizes back to p for every pixel value."""
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    codes = quantize_input(to_float(pixels)).codes.values
    assert np.array_equal(codes, pixels.astype(np.float32))


def test_an_epilogue_that_overflows_float32_is_refused_by_name():
    """A diverged run (a batch-norm scale of 1e37): tinypact's float32 forward would overflow to inf and
    NaN codes, which no thresholds reproduce, so export refuses that layer in one line."""
    import pytest

    from integer_engine.errors import EngineError
    from tinypact.models import build_model, randomize_statistics
    from tinypact.quant import Policy

    net = randomize_statistics(build_model("fmnist", Policy(wbits=2, abits=2)))
    net.bn1.weight.data[0] = 1e37  # the largest accumulators times this pass 3.4e38
    with pytest.raises(EngineError, match=r"layer 'conv1': the float epilogue overflows float32"):
        lower_graph(net.graph(), net.state_dict())
