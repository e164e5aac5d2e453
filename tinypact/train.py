"""`python -m tinypact.train [DATASET] [options]`: quantization-aware training from the command line.

With no arguments it trains a 2-bit PACT network (W2A2, 8-bit first/last layer weights) on the
Fashion-MNIST sample bundled with the package, in a few minutes on a laptop. `svhn` and `cifar10`
default to the paper's recipes (tinypact.recipes). The loop itself is `tinypact.trainer.fit`.

Exit status: 0 done; 1 data or training failure; 2 bad arguments, checkpoint or run directory;
130 interrupted (the last epoch's checkpoint stays intact; rerun with --resume).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from tinypact.checkpoint import CHECKPOINT_NAME, METRICS_NAME, CheckpointError, is_run_dir
from tinypact.models import MODEL_FOR_DATASET, MODELS
from tinypact.recipes import ACT_QUANTS, DATASETS, OPTIMIZERS, SCHEDULES, WEIGHT_QUANTS, recipe
from tinypact.recipes import AUGMENTATIONS, TrainConfig

DATA_DIR_HELP = ("where data sets are stored and downloaded (default: $TINYPACT_DATA if set, else "
                 "~/.cache/tinypact; the bundled sample needs none)")
NO_CHECKSUM_HELP = ("use local data files even if their MD5 is not the official one (skips the "
                    "integrity check of downloaded and hand-placed files: a partial or different "
                    "file then trains or scores without a warning)")

PROG = "python -m tinypact.train"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (and exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser(parser_class: type = OneLineParser) -> argparse.ArgumentParser:
    """The CLI's options; `parser_class` lets tinypact.sweep read the same options from a sweep
    file and report a mistake its own way."""
    parser = parser_class(
        prog=PROG,
        description="Train a low-precision network (PACT / DoReFa / SAWB) with tinypact. With no "
        "dataset: 2-bit PACT on the bundled Fashion-MNIST sample (a few minutes).",
        epilog="Examples: `python -m tinypact.train` | `python -m tinypact.train fashion-mnist "
        "--bits 4` | `python -m tinypact.train cifar10 --wbits 2 --abits 2 --weight-quant sawb`. "
        "Afterwards: `python -m tinypact.evaluate RUN`, `python -m integer_engine export RUN -o "
        "RUN/model.tpq`.")
    parser.add_argument("dataset", nargs="?", default="sample", choices=DATASETS,
                        help="data set (default: sample, the bundled Fashion-MNIST subset)")
    own = ", ".join(f"{data} {model}" for data, model in MODEL_FOR_DATASET.items())
    parser.add_argument("--model", choices=list(MODELS),
                        help=f"network (default: the data set's own: {own}). On another data "
                        "set the stem conv takes its images' channels and smaller images are "
                        "zero-padded to the network's size (resnet20: 28x28 -> 32x32); the "
                        "optimizer settings come from the network's own recipe, epochs, batch "
                        "size and augmentation from the data set's")
    quant = parser.add_argument_group("quantization")
    quant.add_argument("--bits", type=int, metavar="K",
                       help="weight and activation bits of interior layers (1-8, 16; 32 = a float "
                       "network: also float first/last layers and plain ReLU)")
    quant.add_argument("--wbits", type=int, metavar="K", help="weight bits (overrides --bits)")
    quant.add_argument("--abits", type=int, metavar="K", help="activation bits (overrides --bits)")
    quant.add_argument("--first-last-bits", type=int, metavar="K",
                       help="weight bits of the first conv and the last linear layer (default 8)")
    quant.add_argument("--shortcut-bits", type=int, metavar="K",
                       help="resnet20: bits of the residual stream, the activation after each "
                       "add (default 8, the follow-up paper's high-precision shortcuts; 2-8, or "
                       "32 = float, which trains but cannot be exported to integers)")
    quant.add_argument("--weight-quant", choices=WEIGHT_QUANTS,
                       help="weight quantizer: dorefa (default), sawb, or sawb0 (zero-aligned SAWB: "
                            "2**k - 1 levels including 0; 2, 4 or 8 bits)")
    quant.add_argument("--act-quant", choices=ACT_QUANTS, help="activation quantizer (pact)")
    quant.add_argument("--alpha-init", type=float, metavar="A",
                       help="initial PACT clipping level (default 10, as in the paper's Fig. 2)")
    train = parser.add_argument_group("training (defaults: the data set's recipe)")
    train.add_argument("--epochs", type=int, metavar="N",
                       help="passes over the training images " + recipe_defaults("epochs"))
    train.add_argument("--batch-size", type=int, metavar="N",
                       help="images per training step " + recipe_defaults("batch_size"))
    train.add_argument("--lr", type=float, help="initial learning rate " + recipe_defaults("lr"))
    train.add_argument("--optimizer", choices=OPTIMIZERS,
                       help="optimizer " + recipe_defaults("optimizer"))
    train.add_argument("--schedule", choices=SCHEDULES,
                       help="learning-rate schedule " + recipe_defaults("schedule"))
    train.add_argument("--weight-decay", type=float,
                       help="L2 on weights (and PACT alphas) " + recipe_defaults("weight_decay"))
    train.add_argument("--augment", choices=AUGMENTATIONS,
                       help="training augmentation " + recipe_defaults("augment"))
    train.add_argument("--val-size", type=int, metavar="N",
                       help="training images held out for validation error, at most half of "
                       "them " + recipe_defaults("val_size"))
    train.add_argument("--limit-train", type=int, metavar="N",
                       help="train on only N images (quick runs; default: all)")
    train.add_argument("--limit-test", type=int, metavar="N",
                       help="test on only N images (default: all)")
    train.add_argument("--seed", type=int, metavar="S",
                       help="seed of the initial weights, shuffling, augmentation and validation "
                       "hold-out (default 0)")
    train.add_argument("--svhn-extra", action="store_true",
                       help="svhn: train on train + extra (604,388 images, as tensorpack's "
                       "example does; downloads extra_32x32.mat, 1.3 GB, md5-checked)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", metavar="RUN", help="run directory (default: runs/DATASET-POLICY)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint")
    run.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    run.add_argument("--no-checksum", action="store_true", help=NO_CHECKSUM_HELP)
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bars (they are drawn only on a terminal anyway)")
    run.add_argument("--no-export", action="store_true",
                     help="skip the integer-engine export and verification at the end")
    return parser


def recipe_defaults(field_name: str) -> str:
    """'(default: sample 8, fashion-mnist 3, ...)': a field's value in every data set's recipe."""
    values = ", ".join(f"{name} {getattr(recipe(name), field_name)}" for name in DATASETS)
    return f"(default: {values})"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The dataset's recipe with the options given on the command line; ValueError if invalid."""
    from tinypact.quant.functional import check_bits

    for name in ("bits", "wbits", "abits", "first_last_bits", "shortcut_bits"):
        value = getattr(args, name)
        if value is not None:
            check_bits(value, f"--{name.replace('_', '-')}")
    overrides = {
        "wbits": args.wbits if args.wbits is not None else args.bits,
        "abits": args.abits if args.abits is not None else args.bits,
        "model": args.model, "first_last_bits": args.first_last_bits,
        "shortcut_bits": args.shortcut_bits, "weight_quant": args.weight_quant,
        "act_quant": args.act_quant, "alpha_init": args.alpha_init, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer,
        "schedule": args.schedule, "weight_decay": args.weight_decay, "augment": args.augment,
        "val_size": args.val_size, "limit_train": args.limit_train,
        "limit_test": args.limit_test, "seed": args.seed, "data_dir": args.data_dir,
        "verify_checksums": False if args.no_checksum else None,
        "svhn_extra": True if args.svhn_extra else None,
    }
    if overrides["abits"] == 32 and args.act_quant is None:
        overrides["act_quant"] = "relu"  # a float network is a plain ReLU network
    if args.bits == 32 and args.first_last_bits is None:
        overrides["first_last_bits"] = 32
    model = args.model or MODEL_FOR_DATASET[args.dataset]
    if args.shortcut_bits is not None and model != "resnet20":
        raise ValueError(f"--shortcut-bits sets resnet20's residual stream; the {model} network "
                         f"has no shortcuts (add --model resnet20)")
    if args.bits == 32 and args.shortcut_bits is None and model == "resnet20":
        overrides["shortcut_bits"] = 32
    if args.optimizer is not None and args.optimizer != recipe(args.dataset, model=args.model).optimizer \
            and args.lr is None:
        # Another optimizer needs another learning rate than the recipe's.
        overrides["lr"] = {"adam": 1e-3, "sgd": 0.1}[args.optimizer]
    config = recipe(args.dataset, **overrides)
    config.validate()
    _check_policy(config)
    return config


def _check_policy(config: TrainConfig) -> None:
    """Let tinypact.quant reject bit widths it cannot represent (e.g. 12), as a ValueError."""
    from tinypact.quant import Policy

    Policy(**config.policy_kwargs())


def policy_tag(config: TrainConfig) -> str:
    if config.is_float:
        return "float"
    tag = f"w{config.wbits}a{config.abits}-{config.act_quant.replace('+', 'plus')}" + (
        "" if config.weight_quant == "dorefa" else f"-{config.weight_quant}")
    if config.model_name == "resnet20" and config.shortcut_bits != 8:
        tag += f"-sc{config.shortcut_bits}"
    return tag


def default_run_dir(config: TrainConfig, resume: bool) -> Path:
    """runs/DATASET[-MODEL]-POLICY (MODEL when not the data set's own), or -2, -3, ... for a new
    run; the latest existing one to resume."""
    model = "" if config.model is None or config.model == MODEL_FOR_DATASET[config.dataset] \
        else f"-{config.model}"
    base = Path("runs") / f"{config.dataset}{model}-{policy_tag(config)}"
    candidates = [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 1000)]
    existing = [path for path in candidates if is_run_dir(path)]
    if resume:
        return existing[-1] if existing else base
    return next(path for path in candidates if not is_run_dir(path))


def resume_command(argv: list[str], run_dir: Path) -> str:
    args = list(argv)
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", str(run_dir)]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["python", "-m", "tinypact.train", *args])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(args.out) if args.out else default_run_dir(config, args.resume)

    from tinypact.data import DataError
    from tinypact.trainer import ALPHA_PLOT, ERROR_PLOT, RESULT_NAME, fit

    try:
        result = fit(config, run_dir, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with `{resume_command(argv, run_dir)}`", file=sys.stderr)
        return 130
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DataError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    print(f"test accuracy {100 * result.test_accuracy:.2f}% (error {100 * result.test_error:.2f}%)"
          f" on {result.test_images} test images")
    written = [CHECKPOINT_NAME, METRICS_NAME, ERROR_PLOT, ALPHA_PLOT, RESULT_NAME, "config.json"]
    print(f"wrote    {run_dir}/{{{','.join(written)}}}")
    exported = None if args.no_export else export_and_verify(result)
    print("next     python -m tinypact.evaluate " + shlex.quote(str(run_dir)))
    if exported is not None:
        model_arg = shlex.quote(str(exported))
        print(f"         python -m integer_engine run {model_arg} --data {config.dataset}")
        print(f"         python -m integer_engine simulate {model_arg}")
    elif not config.float_layers:
        print(f"         python -m integer_engine export {shlex.quote(str(run_dir))} -o "
              f"{shlex.quote(str(run_dir / 'model.tpq'))}")
    return 0


def export_and_verify(result) -> Path | None:
    """Export the trained model to RUN/model.tpq with integer_engine and check it is exact.

    The single call site of the end-of-training hand-off (docs/ARCHITECTURE.md): tinypact uses
    integer_engine as a user would. Runs the integer model on every test image and compares
    every layer's output with the trained model's (the checkpoint, run by tinypact), then prints
    the integer-only accuracy. Skipped for policies with float layers; an export failure is
    reported, it does not undo the training. Returns the model file's path, or None.
    """
    config, run_dir = result.config, result.run_dir
    if config.float_layers:
        parts = config.float_layers
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        print(f"export   skipped: float {listed} cannot be exported to the integer engine "
              f"(it runs integer-only networks)")
        return None
    try:
        from integer_engine.errors import EngineError
        from integer_engine.export import export_checkpoint
        from integer_engine.format import save_model
        from integer_engine.verify import verify_against_checkpoint
    except ImportError as err:
        print(f"export   skipped: integer_engine is not available ({err})")
        return None

    path = run_dir / "model.tpq"
    test = result.test_set
    print(f"export   to {path}, then verify it on {len(test)} test images (a first run on this "
          f"machine also compiles the engine's kernels: up to about 40 s)", flush=True)
    try:
        integer_model = export_checkpoint(run_dir)
        save_model(integer_model, path)
        report = verify_against_checkpoint(integer_model, run_dir, test.images, batch_size=256)
    except EngineError as err:
        print(f"export   failed: {err}")
        return None
    accuracy = float(np.mean(report.engine_predictions == test.labels))
    agree = float(np.mean(report.engine_predictions == report.other_predictions))
    print(f"export   {path}: integer-only accuracy {100 * accuracy:.2f}% on {len(test)} test images")
    verdict = "bit-exact" if report.ok else "MISMATCH (please report this as a bug)"
    print(f"verify   engine vs trained model: {report.total_mismatches} mismatching codes in "
          f"{len(report.mismatches)} layers, predictions equal on {100 * agree:.2f}%: {verdict}")
    return path


if __name__ == "__main__":
    sys.exit(main())
