"""`python -m tinypact.evaluate RUN_OR_CHECKPOINT`: test accuracy of a trained run.

Rebuilds the model from the checkpoint's meta (name, precision policy), loads its weights and
scores it on the test split of the data set it was trained on (or on its validation hold-out).
Exit status: 0 ok; 1 data failure; 2 bad arguments or unusable checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys

from tinypact.checkpoint import CheckpointError, load_checkpoint
from tinypact.train import DATA_DIR_HELP, NO_CHECKSUM_HELP, OneLineParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m tinypact.evaluate",
                           description="Report the test accuracy of a tinypact run or checkpoint.")
    parser.add_argument("run", metavar="RUN_OR_CHECKPOINT",
                        help="a run directory (uses its checkpoint.npz) or a checkpoint file")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test split (default) or the run's validation hold-out")
    parser.add_argument("--limit", type=int, metavar="N", help="score only the first N images")
    parser.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    parser.add_argument("--no-checksum", action="store_true", help=NO_CHECKSUM_HELP)
    parser.add_argument("--batch-size", type=int, default=256, metavar="N",
                        help="images per forward pass (default 256)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is drawn only on a terminal anyway)")
    return parser


def evaluate_checkpoint(run_or_file: str, split: str = "test", limit: int | None = None,
                        data_dir: str | None = None, batch_size: int = 256,
                        progress: bool = False, verify_checksums: bool = True) -> dict:
    """{"accuracy", "error", "loss", "images", "epoch", ...} of a checkpoint on `split`.

    Raises CheckpointError for an unusable checkpoint, DataError if the data cannot be loaded.
    """
    from tinypact.recipes import TrainConfig
    from tinypact.trainer import build_from_meta, evaluate, load_splits

    checkpoint = load_checkpoint(run_or_file)
    try:
        config = TrainConfig.from_dict(checkpoint.config)
        model = build_from_meta(checkpoint.meta["model"])
        model.load_state_dict(checkpoint.model_state)
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{checkpoint.path} does not describe a model this tinypact can "
                              f"build ({str(err).splitlines()[0][:200]})") from None
    overrides = {"limit_test": limit} if split == "test" else {}
    overrides["verify_checksums"] = verify_checksums
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    _, val, test = load_splits(config.replace(**overrides))
    dataset = test if split == "test" else val
    if dataset is None:
        raise CheckpointError(f"{checkpoint.path}: the run held out no validation images")
    if split == "val" and limit is not None:
        dataset = dataset.subset(range(min(limit, len(dataset))))
    loss, error = evaluate(model, dataset, batch_size=batch_size, progress=progress, desc=split)
    return {"checkpoint": str(checkpoint.path), "dataset": config.dataset, "split": split,
            "images": len(dataset), "accuracy": 1.0 - error, "error": error, "loss": loss,
            "epoch": checkpoint.epoch, "epochs": config.epochs,
            "policy": config.describe_policy()}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    from tinypact.data import DataError

    try:
        result = evaluate_checkpoint(args.run, args.split, args.limit, args.data_dir,
                                     args.batch_size, progress=not args.no_progress,
                                     verify_checksums=not args.no_checksum)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"{result['split']} accuracy {100 * result['accuracy']:.2f}% "
              f"(error {100 * result['error']:.2f}%, loss {result['loss']:.4f}) on "
              f"{result['images']} {result['dataset']} images; {result['policy']}; "
              f"checkpoint {result['checkpoint']} at epoch {result['epoch']}/{result['epochs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
