"""ResNet20 in PyTorch + Brevitas, trained exactly as tinypact trains it: the study's other side.

Needs torch and brevitas (never tinypact dependencies); in their own virtual environment:

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 brevitas==0.13.4 -e .
    .venv-torch/bin/python benchmarks/brevitas_parity.py --seeds 0 1      # the study's rows
    .venv-torch/bin/python benchmarks/brevitas_parity.py --quick          # tiny smoke run

What is the same as tinypact's run of the same row and seed (`benchmarks/accuracy_study.py
--model resnet20`, whose table shows these rows beside tinypact's):
- the network: tinypact's `resnet20` graph module for module (the stem padded for 28x28 images,
  option-A shortcuts: 2x2 average pool + zero channels, 8-bit first/last-layer weights, the
  residual stream at `shortcut_bits`, an activation quantizer before a block's first conv where
  the activation and shortcut bits differ), with the same state-dict names;
- the initial weights: tinypact's model is built with the run's seed and copied in;
- the data: tinypact's own train / validation / test split (`load_splits`) and its batch order
  (`DataLoader` with the run's seed, epoch by epoch);
- the schedule: SGD momentum 0.9, L2 on conv/linear weights and on the learned clipping levels,
  none on batch-norm parameters and biases, cosine decay stepped once per epoch.

The quantizers are what a Brevitas user picks for the nearest thing to PACT + SAWB:
- activations: `QuantReLU` with `Uint8ActPerTensorFloatMaxInit` (a learned per-tensor scale,
  initialised from `max_val` = PACT's alpha_init). Unlike PACT, the gradient reaches the scale
  through the rounding too (LSQ-style, like PACT+), rounding is half to even, and the learned
  parameter is the clipping level itself in float (scale = level / (2^b - 1)).
- weights: Brevitas's `Int8WeightPerTensorFloatMSE` at 2 bits with `scaling_impl_type = STATS`
  (first/last layers: `Int8WeightPerTensorFloat` at 8): a per-tensor scale found each step by
  Brevitas's MSE search over the weights (no gradient into the scale), which is what SAWB
  approximates in closed form from two statistics. The stock `Int8WeightPerTensorFloatMSE` only
  initialises the scale by that search and then learns it; under this schedule (SGD, lr 0.1) the
  learned 2-bit scales ran away (to 2e3-3e5 within one epoch), whole layers quantized to zero and
  validation error was 87.7% after the first epoch, so the study uses the search every step.
  Brevitas's signed weight grids are narrow (symmetric): 2 bits give 3 levels {-s, 0, s}, where
  SAWB's 2-bit grid has 4 levels {-a, -a/3, a/3, a} and no zero. At 4 bits the same quantizer
  stands in for DoReFa (tinypact's W4A4 row): 15 levels against 16.

Each run writes RUNS/<row>-seed<k>/result.json (accuracy as a fraction, validation error per
epoch); finished runs are skipped when the command is repeated, an unfinished one starts over.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import torch
    import torch.nn.functional as TF
    from torch import nn
except ImportError:
    sys.exit("error: this benchmark needs torch and brevitas: python3 -m venv .venv-torch && "
             ".venv-torch/bin/pip install torch==2.13.0 brevitas==0.13.4 -e .")

# Rows: label -> (the tinypact study row it mirrors, weight bits, activation bits, shortcut bits);
# 32 = float (plain torch layers).
ROWS = {
    "torch float": ("float", 32, 32, 32),
    "Brevitas W2A2 SC8": ("PACT+SAWB W2A2 SC8", 2, 2, 8),
    "Brevitas W2A2 SC2": ("PACT+SAWB W2A2 SC2", 2, 2, 2),
    "Brevitas W4A4": ("PACT W4A4", 4, 4, 8),
}
FIRST_LAST_BITS = 8


# ------------------------------------------------------------------------------------- network
def mse_each_step_weight_quant():
    """Brevitas's MSE weight quantizer with its scale searched every step instead of learned
    after the first (see the module docstring)."""
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import Int8WeightPerTensorFloatMSE

    return Int8WeightPerTensorFloatMSE.let(scaling_impl_type=ScalingImplType.STATS)


class Quantizers:
    """Layer factories for one precision (32 = float: plain torch modules)."""

    def __init__(self, wbits: int, abits: int, shortcut_bits: int, alpha_init: float):
        self.wbits, self.abits, self.shortcut_bits = wbits, abits, shortcut_bits
        self.alpha_init = alpha_init
        self.quantized = wbits < 32

    def conv(self, cin: int, cout: int, stride: int, padding: int, bits: int) -> nn.Module:
        if not self.quantized:
            return nn.Conv2d(cin, cout, 3, stride, padding, bias=False)
        import brevitas.nn as qnn
        from brevitas.quant import Int8WeightPerTensorFloat

        quant = Int8WeightPerTensorFloat if bits >= 8 else mse_each_step_weight_quant()
        return qnn.QuantConv2d(cin, cout, 3, stride, padding, bias=False, weight_quant=quant,
                               weight_bit_width=bits)

    def linear(self, cin: int, cout: int) -> nn.Module:
        if not self.quantized:
            return nn.Linear(cin, cout)
        import brevitas.nn as qnn
        from brevitas.quant import Int8WeightPerTensorFloat

        return qnn.QuantLinear(cin, cout, bias=True, weight_quant=Int8WeightPerTensorFloat,
                               weight_bit_width=FIRST_LAST_BITS)

    def act(self, bits: int) -> nn.Module:
        if bits >= 32:
            return nn.ReLU()
        import brevitas.nn as qnn
        from brevitas.quant import Uint8ActPerTensorFloatMaxInit

        return qnn.QuantReLU(act_quant=Uint8ActPerTensorFloatMaxInit, max_val=self.alpha_init,
                             bit_width=bits)


class Block(nn.Module):
    """tinypact.models.BasicBlock: out = out_act(bn2(conv2(act1(bn1(conv1(in_act(h)))))) + s)."""

    def __init__(self, q: Quantizers, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.pad_channels = stride, cout - cin
        self.in_act = q.act(q.abits) if q.abits != q.shortcut_bits else None
        self.conv1, self.bn1, self.act1 = q.conv(cin, cout, stride, 1, q.wbits), nn.BatchNorm2d(cout), q.act(q.abits)
        self.conv2, self.bn2 = q.conv(cout, cout, 1, 1, q.wbits), nn.BatchNorm2d(cout)
        self.out_act = q.act(q.shortcut_bits)

    def forward(self, h):
        a = h if self.in_act is None else self.in_act(h)
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(a)))))
        s = h
        if self.stride != 1 or self.pad_channels:
            s = TF.pad(TF.avg_pool2d(h, self.stride, self.stride), (0, 0, 0, 0, 0, self.pad_channels))
        return self.out_act(y + s)


class ResNet20(nn.Module):
    """tinypact.models.ResNet20 with the same state-dict names (conv0, bn0, layer1.0.conv1, ...)."""

    def __init__(self, q: Quantizers, in_channels: int, stem_padding: int, num_classes: int = 10):
        super().__init__()
        self.conv0 = q.conv(in_channels, 16, 1, 1 + stem_padding, FIRST_LAST_BITS)
        self.bn0, self.act0 = nn.BatchNorm2d(16), q.act(q.shortcut_bits)
        self.layer1 = nn.Sequential(*[Block(q, 16, 16, 1) for _ in range(3)])
        self.layer2 = nn.Sequential(Block(q, 16, 32, 2), Block(q, 32, 32, 1), Block(q, 32, 32, 1))
        self.layer3 = nn.Sequential(Block(q, 32, 64, 2), Block(q, 64, 64, 1), Block(q, 64, 64, 1))
        self.fc = q.linear(64, num_classes)

    def forward(self, x):
        x = self.act0(self.bn0(self.conv0(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(TF.adaptive_avg_pool2d(x, 1), 1))


def copy_initial_weights(net: nn.Module, tinypact_model) -> None:
    """Every conv/linear weight, bias and batch-norm tensor of tinypact's freshly built model,
    by name (PACT alphas have no counterpart: Brevitas's levels start at max_val)."""
    source = tinypact_model.state_dict()
    target = {**dict(net.named_parameters()), **dict(net.named_buffers())}
    copied = 0
    with torch.no_grad():
        for name, value in source.items():
            if name.endswith(".alpha") or name.endswith("running_max"):
                continue
            if name not in target:
                raise KeyError(f"tinypact's {name} has no counterpart in the torch model")
            target[name].copy_(torch.from_numpy(value.copy()).reshape(target[name].shape))
            copied += 1
    if copied < 60:
        raise RuntimeError(f"only {copied} tensors copied from tinypact's model")


# ------------------------------------------------------------------------------------ training
def parameter_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """tinypact's groups (trainer.build_optimizer): L2 on conv/linear weights and on the learned
    clipping levels, none on batch-norm parameters and biases."""
    decayed, others = [], []
    for name, p in net.named_parameters():
        (decayed if p.ndim > 1 or "scaling_impl" in name else others).append(p)
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": others, "weight_decay": 0.0}]


def first_batch_difference(net: nn.Module, reference, train, config) -> float:
    """Max |logit difference| between the torch network and tinypact's on the run's first
    training batch, both in training mode (batch statistics): float32 round-off only, when the
    two are the same network with the same weights (the float row; Brevitas's quantizers are
    not tinypact's, so quantized rows differ by design)."""
    from tinypact.data import DataLoader
    from tinypact.tensor import Tensor, no_grad

    x, _ = DataLoader(train, batch_size=config.batch_size, shuffle=True, seed=config.seed).batch(0, 0)
    reference.train()
    with no_grad():
        expected = reference(Tensor(x)).data
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    net.load_state_dict(state)  # undo the batch-norm running statistics update
    return float(abs(got - expected).max())


def error_rate(net: nn.Module, dataset, batch_size: int = 256) -> float:
    from tinypact.data.transforms import to_float

    net.eval()
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            x = torch.from_numpy(to_float(dataset.images[start:start + batch_size]))
            labels = torch.from_numpy(dataset.labels[start:start + batch_size])
            wrong += int((net(x).argmax(1) != labels).sum())
    net.train()
    return wrong / max(len(dataset), 1)


def train_row(label: str, seed: int, schedule: dict, run_dir: Path, data_dir: str | None) -> dict:
    """Train one (row, seed) as tinypact's accuracy study does; write run_dir/result.json."""
    from tinypact.data import DataLoader
    from tinypact.recipes import recipe
    from tinypact.trainer import build, load_splits

    study_row, wbits, abits, shortcut_bits = ROWS[label]
    overrides = {k: v for k, v in schedule.items() if k != "dataset"}
    config = recipe(schedule["dataset"], **overrides, seed=seed, data_dir=data_dir,
                    wbits=wbits, abits=abits, shortcut_bits=shortcut_bits,
                    first_last_bits=32 if wbits >= 32 else FIRST_LAST_BITS,
                    act_quant="relu" if abits >= 32 else "pact",
                    weight_quant="sawb" if wbits == 2 else "dorefa")
    train, val, test = load_splits(config)
    reference, _ = build(config, train.shape)
    torch.manual_seed(seed)
    q = Quantizers(wbits, abits, shortcut_bits, config.alpha_init)
    net = ResNet20(q, reference.in_channels, reference.stem_padding)
    copy_initial_weights(net, reference)
    if wbits >= 32:
        print(f"   same network and start as tinypact: first batch's logits differ by at most "
              f"{first_batch_difference(net, reference, train, config):.2e}", flush=True)
    optimizer = torch.optim.SGD(parameter_groups(net, config.weight_decay), lr=config.lr,
                                momentum=config.momentum)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, seed=config.seed)
    history, start = [], time.perf_counter()
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        loader.set_epoch(epoch)
        net.train()
        total, wrong, seen = 0.0, 0, 0
        for x, labels in loader:
            x, labels = torch.from_numpy(x), torch.from_numpy(labels)
            logits = net(x)
            loss = TF.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"{label} seed {seed} diverged at epoch {epoch + 1}")
            total += value * len(labels)
            wrong += int((logits.argmax(1) != labels).sum())
            seen += len(labels)
        scheduler.step()
        val_error = error_rate(net, val) if val is not None else None
        history.append({"epoch": epoch + 1, "loss": total / seen, "train_error": wrong / seen,
                        "val_error": val_error,
                        "epoch_time": round(time.perf_counter() - epoch_start, 3)})
        print(f"   epoch {epoch + 1}/{config.epochs}: loss {total / seen:.4f}, train error "
              f"{100 * wrong / seen:.2f}%" + ("" if val_error is None else
                                              f", val error {100 * val_error:.2f}%"), flush=True)
    test_error = error_rate(net, test)
    result = {"row": label, "mirrors": study_row, "seed": seed, "test_accuracy": 1 - test_error,
              "test_error": test_error, "test_images": len(test),
              "val_error": history[-1]["val_error"], "epochs": config.epochs,
              "train_time": round(time.perf_counter() - start, 3), "history": history,
              "schedule": schedule, "torch": torch.__version__,
              "brevitas": _brevitas_version(), "threads": torch.get_num_threads()}
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, run_dir / "result.json")
    return result


def _brevitas_version() -> str:
    try:
        import brevitas
        return brevitas.__version__
    except ImportError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    from accuracy_study import RESNET20_QUICK, RESNET20_SCHEDULE, slug

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS),
                        metavar="ROW", help=f"rows to train (default: all of {', '.join(ROWS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], metavar="K")
    parser.add_argument("--runs-dir", type=Path,
                        help="default: benchmarks/results/brevitas_parity_runs")
    parser.add_argument("--data-dir", help="where Fashion-MNIST lives (default: Debian's copy)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (default: all cores)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings into a temporary directory: checks the script runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    schedule = dict(RESNET20_QUICK if args.quick else RESNET20_SCHEDULE)
    runs_dir = args.runs_dir or (Path(tempfile.mkdtemp(prefix="brevitas-quick-")) if args.quick
                                 else ROOT / "benchmarks" / "results" / "brevitas_parity_runs")
    from tinypact.data import DataError

    for seed in args.seeds:
        for label in args.rows:
            run_dir = runs_dir / f"{slug(label)}-seed{seed}"
            if (run_dir / "result.json").exists():
                print(f"== {label}, seed {seed}: finished earlier ({run_dir})")
                continue
            print(f"== {label}, seed {seed} (torch {torch.__version__}, brevitas "
                  f"{_brevitas_version()}, {args.threads} threads)", flush=True)
            try:
                result = train_row(label, seed, schedule, run_dir, args.data_dir)
            except DataError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            print(f"   -> test accuracy {100 * result['test_accuracy']:.2f}% "
                  f"({result['train_time'] / 60:.1f} min)", flush=True)
    print(f"results in {runs_dir}; `python benchmarks/accuracy_study.py --model resnet20` puts "
          f"them in the study's table")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
