"""The training loop behind `python -m tinypact.train`: `fit` a TrainConfig into a run directory.

One epoch: shuffle (seeded by (seed, epoch)), augment, forward, cross-entropy, backward, optimizer
step, clamp PACT alphas positive; then step the LR schedule, measure validation error, and save
an atomic checkpoint and `metrics.jsonl`, and redraw the plots.

Exact resumption. Everything random in epoch e is drawn from generators seeded with
(seed, e): the shuffling order, the augmentation, and tinypact's global generator (dropout). So a
run resumed from the checkpoint of epoch e (weights, buffers, optimizer moments and step counts,
schedule, history) computes exactly what the uninterrupted run computes, bit for bit.

Data: the validation set is `val_size` images held out of the train split (a permutation seeded
by `seed`, so it never changes between resumes); the test split is only used at the end.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tinypact import functional as F
from tinypact import random as tp_random
from tinypact.checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    CheckpointError,
    check_resume_config,
    load_checkpoint,
    prepare_run_dir,
    read_config,
    remove_orphans,
    run_dir_lock,
    save_checkpoint,
    write_json_atomic,
    write_metrics,
)
from tinypact.recipes import TrainConfig
from tinypact.tensor import Tensor, no_grad

ERROR_PLOT = "error_curves.png"
ALPHA_PLOT = "alphas.png"
RESULT_NAME = "result.json"
# Plots are redrawn after every epoch that took at least this long (seconds; drawing costs about
# a second), and always at the end of a run; tiny runs (tests) so draw them once.
PLOT_EVERY_EPOCH_AFTER = 5.0


# ------------------------------------------------------------------------------------------ data
def load_splits(config: TrainConfig):
    """(train, validation or None, test) Datasets: validation is held out of the train split."""
    from tinypact.data import DataError, load_dataset, resolve_data_dir

    if config.data_dir:
        resolve_data_dir(config.data_dir)  # a file is refused even where the data set needs none
    options = {"data_dir": config.data_dir, "verify_checksums": config.verify_checksums}
    full = load_dataset(config.dataset, config.train_split, **options)
    test = load_dataset(config.dataset, "test", **options)
    # The hold-out depends only on the seed: a resumed run validates on the same images.
    order = np.random.default_rng([config.seed, 0xDA7A]).permutation(len(full))
    val_size = config.val_size
    if val_size > len(full) // 2:
        raise DataError(f"--val-size {val_size} would hold out more than half of the {len(full)} "
                        f"{config.dataset} training images; use at most {len(full) // 2}")
    val = full.subset(np.sort(order[:val_size])) if val_size > 0 else None
    train_idx = order[val_size:]
    if config.limit_train is not None:
        train_idx = train_idx[:config.limit_train]
    train = full.subset(np.sort(train_idx))
    if config.limit_test is not None:
        test = test.subset(np.arange(min(config.limit_test, len(test))))
    return train, val, test


def train_transform(config: TrainConfig):
    """The augmentation named by `config.augment` (tinypact.data.transforms), or None."""
    from tinypact.data import transforms

    if config.augment == "none":
        return None
    if config.augment == "crop":
        return transforms.RandomCrop(padding=4)
    if config.augment == "jitter":
        return transforms.BrightnessContrast(brightness=30.0, contrast=(0.5, 1.5))
    return transforms.Compose([transforms.RandomCrop(padding=4),
                               transforms.RandomHorizontalFlip(0.5)])


def train_loader(train, config: TrainConfig):
    """The training DataLoader: its order and augmentation are functions of (seed, epoch)."""
    from tinypact.data import DataLoader

    return DataLoader(train, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                      transform=train_transform(config))


def reseed_for_epoch(seed: int, epoch: int) -> None:
    """Reseed tinypact's global generator (dropout) from (seed, epoch), for exact resumption."""
    tp_random.manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


# ----------------------------------------------------------------------------------------- model
def build(config: TrainConfig, image_shape: tuple[int, ...] | None = None, num_classes: int = 10):
    """(model, model_meta) for a config and the data's image shape (C, H, W) (None: the
    network's native input); model_meta is the checkpoint's {"name", "kwargs"} (`Network.spec`).
    ValueError (one line) when the images cannot be brought to the network."""
    from tinypact.models import build_model
    from tinypact.quant import Policy

    tp_random.manual_seed(config.seed)
    policy = Policy(**config.policy_kwargs())
    options = {}
    if image_shape is not None:
        channels, height, width = image_shape
        if height != width:
            raise ValueError(f"the networks take square images, got {height}x{width}")
        options = {"in_channels": channels, "image_size": height}
    model = build_model(config.model_name, policy, num_classes=num_classes, **options)
    return model, model.spec()


def build_from_meta(model_meta: dict):
    """Rebuild the (untrained) model a checkpoint's {"name", "kwargs"} describes."""
    from tinypact.models import build_model
    from tinypact.quant import Policy

    kwargs = dict(model_meta["kwargs"])
    policy = Policy.from_dict(kwargs.pop("policy"))
    return build_model(model_meta["name"], policy, **kwargs)


def model_alphas(model) -> dict[str, float]:
    """Each layer's learned clipping level (PACT), as floats; {} for other policies."""
    from tinypact import quant

    return {name: float(np.asarray(value)) for name, value in quant.alphas(model).items()}


def _clamp_alphas(model) -> None:
    from tinypact import quant

    clamp = getattr(quant, "clamp_alphas", None)
    if clamp is not None:
        clamp(model)


def build_optimizer(model, config: TrainConfig):
    """(optimizer, scheduler): L2 decay on conv/linear weights and on PACT alphas, none on
    batch-norm parameters and biases (the paper's "L2 on weights", lambda_alpha = decay)."""
    from tinypact import optim
    from tinypact.quant import alpha_parameters

    alpha_ids = {id(p) for p in alpha_parameters(model)}
    decayed, alphas, others = [], [], []
    for name, param in model.named_parameters():
        if id(param) in alpha_ids:
            alphas.append(param)
        elif param.data.ndim > 1:
            decayed.append(param)
        else:
            others.append(param)
    alpha_decay = config.weight_decay if config.alpha_decay is None else config.alpha_decay
    groups = [{"params": decayed, "weight_decay": config.weight_decay},
              {"params": alphas, "weight_decay": alpha_decay,
               "lr": config.lr if config.alpha_lr is None else config.alpha_lr},
              {"params": others, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    if config.optimizer == "adam":
        optimizer = optim.Adam(groups, lr=config.lr, eps=config.adam_eps)
    else:
        optimizer = optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.schedule == "step":
        scheduler = optim.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    elif config.schedule == "multistep":
        scheduler = optim.MultiStepLR(optimizer, milestones=list(config.milestones),
                                      gamma=config.gamma)
    elif config.schedule == "cosine":
        scheduler = optim.CosineAnnealingLR(optimizer, T_max=config.epochs)
    else:
        scheduler = None
    return optimizer, scheduler


# ------------------------------------------------------------------------------------ evaluation
def progress_bar(iterable, progress: bool, **options):
    """A tqdm bar over `iterable` when `progress` is on and stderr is a terminal (tqdm's
    disable=None), so logs and redirected output get no bar lines; else `iterable` itself."""
    if not progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, disable=None, leave=False, unit="batch", **options)


def evaluate(model, dataset, batch_size: int = 256, progress: bool = False,
             desc: str = "eval") -> tuple[float, float]:
    """(mean cross-entropy, error rate) of `model` on a Dataset, in eval mode, without gradients."""
    from tinypact.data import DataLoader

    was_training = model.training
    model.eval()
    total_loss, wrong = 0.0, 0
    iterator = progress_bar(DataLoader(dataset, batch_size=batch_size, shuffle=False), progress,
                            total=math.ceil(len(dataset) / batch_size), desc=desc)
    try:
        with no_grad():
            for x, labels in iterator:
                logits = model(Tensor(x))
                total_loss += float(F.cross_entropy(logits, labels, reduction="sum").data)
                wrong += int((logits.data.argmax(axis=1) != labels).sum())
    finally:
        model.train(was_training)
    return total_loss / max(len(dataset), 1), wrong / max(len(dataset), 1)


def predict(model, dataset, batch_size: int = 256) -> np.ndarray:
    """Predicted classes (argmax of the logits) for every image of a Dataset, in eval mode."""
    from tinypact.data import DataLoader

    was_training = model.training
    model.eval()
    try:
        with no_grad():
            return np.concatenate([model(Tensor(x)).data.argmax(axis=1) for x, _ in
                                   DataLoader(dataset, batch_size=batch_size, shuffle=False)])
    finally:
        model.train(was_training)


def node_outputs(model, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every graph node's output for uint8 `images` (N, C, H, W) in eval mode, by node id
    (`Network.node_outputs`): int64 codes where the output is quantized, else float32 values.
    This is the trained model integer_engine's layers are compared with."""
    from tinypact.data.transforms import to_float

    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    try:
        with no_grad():
            for start in range(0, len(images), batch_size):
                x = Tensor(to_float(np.asarray(images[start:start + batch_size])))
                for name, out in model.node_outputs(x).items():
                    value = out.data if out.codes is None else out.codes.values.astype(np.int64)
                    parts.setdefault(name, []).append(np.ascontiguousarray(value))
    finally:
        model.train(was_training)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


# -------------------------------------------------------------------------------------- training
@dataclass
class FitResult:
    run_dir: Path
    config: TrainConfig
    model: object
    history: list[dict] = field(default_factory=list)
    test_error: float | None = None
    test_loss: float | None = None
    test_images: int = 0
    finished: bool = False
    test_set: object = None

    @property
    def test_accuracy(self) -> float | None:
        return None if self.test_error is None else 1.0 - self.test_error


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def time_one_step(model, optimizer, loader) -> float:
    """Seconds for one training batch (forward + backward + step), state restored afterwards.

    The first call warms up (Numba compilation, caches); the best of the next two is taken.
    """
    state, rng_state = model.state_dict(), tp_random.get_state()
    x, labels = loader.batch(0, 0)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        loss = F.cross_entropy(model(Tensor(x)), labels)
        optimizer.zero_grad()
        loss.backward()
        seconds.append(time.perf_counter() - start)
    model.load_state_dict(state)
    optimizer.zero_grad()
    tp_random.set_state(rng_state)
    return min(seconds[1:]) * loader.batch_size / len(labels)


LONG_RUN_SECONDS = 30 * 60  # above this, the estimate suggests a shorter first run


def _format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{1000 * seconds:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _is_within(source: str, folder: str) -> bool:
    """True if every path in `source` (" + "-joined) lies inside `folder`."""
    root = Path(folder).expanduser().absolute()
    return all(root in Path(part).absolute().parents for part in source.split(" + "))


def count_parameters(model) -> int:
    return int(sum(p.data.size for p in model.parameters()))


def fit(config: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
        log: Callable[[str], None] = print, stop_after: int | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> FitResult:
    """Train `config` into `run_dir` (new, or resumed from its checkpoint); return the result.

    `stop_after=e` returns right after epoch e's checkpoint, as if the process had been killed
    (used by tests of exact resumption). `on_epoch(record)` is called with each epoch's metrics
    record once its checkpoint is saved (tinypact.sweep reports it to Ray Tune). The final test
    evaluation happens only when all `config.epochs` epochs are done. The run directory is
    locked meanwhile: another process training into it is refused (CheckpointError) instead of
    racing on its files.
    """
    with contextlib.ExitStack() as held:
        return _fit(config, Path(run_dir), resume, progress, log, stop_after, on_epoch, held)


def _fit(config: TrainConfig, run_dir: Path, resume: bool, progress: bool,
         log: Callable[[str], None], stop_after: int | None,
         on_epoch: Callable[[dict], None] | None, held: contextlib.ExitStack) -> FitResult:
    """fit's body; `held` keeps the run directory's lock until it returns."""
    config.validate()
    if run_dir.is_dir():  # before any "exists" advice: is another process writing here?
        held.enter_context(run_dir_lock(run_dir))
    run_dir = prepare_run_dir(run_dir, resume, create=False)
    checkpoint = None
    if resume:
        if (run_dir / CONFIG_NAME).exists():
            check_resume_config(TrainConfig.with_defaults(read_config(run_dir)),
                                config.to_dict(), str(run_dir))
        checkpoint = load_checkpoint(run_dir)
        check_resume_config(TrainConfig.with_defaults(checkpoint.config), config.to_dict(),
                            str(run_dir))
        orphans = remove_orphans(run_dir)
        if orphans:
            log(f"removed  {len(orphans)} temporary file(s) an interrupted write left in {run_dir}")

    # Data first: a missing data set must not leave behind a run directory that blocks a rerun.
    train, val, test = load_splits(config)
    if not resume:
        existed = run_dir.is_dir()
        run_dir.mkdir(parents=True, exist_ok=True)
        if not existed:  # another process may have started a run here since the check above
            held.enter_context(run_dir_lock(run_dir))
            prepare_run_dir(run_dir, resume, create=False)
    write_json_atomic(run_dir / CONFIG_NAME, config.to_dict())
    loader = train_loader(train, config)
    try:
        model, model_meta = build(config, train.shape)
    except ValueError as err:
        from tinypact.data import DataError

        raise DataError(f"{config.dataset} images cannot be fed to the {config.model_name} "
                        f"network: {err}") from None
    optimizer, scheduler = build_optimizer(model, config)
    history: list[dict] = []
    start_epoch = 0
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint.model_state)
            optimizer.load_state_dict(checkpoint.optimizer_state)
            if scheduler is not None:
                scheduler.load_state_dict(checkpoint.scheduler_state)
        except (KeyError, ValueError, TypeError, IndexError) as err:
            raise CheckpointError(f"{checkpoint.path} does not match this model "
                                  f"({str(err).splitlines()[0][:200]})") from None
        history = list(checkpoint.meta.get("history", []))
        start_epoch = checkpoint.epoch
        # metrics.jsonl may hold an epoch the checkpoint does not (killed in between): realign.
        write_metrics(run_dir, history)

    log(f"dataset  {config.dataset}: {len(train)} train, {len(val) if val else 0} validation, "
        f"{len(test)} test images of shape {tuple(train.images.shape[1:])}")
    log(f"data     from {train.source}")
    if config.data_dir and not _is_within(train.source, config.data_dir):
        log(f"         (not from --data-dir {config.data_dir}: it holds no {config.dataset} files)")
    log(f"model    {model_meta['name']}, {count_parameters(model):,} parameters; "
        f"{config.describe_policy()}")
    if model.stem_padding or model.input_shape != model.native_shape:
        native = "x".join(map(str, model.native_shape[1:]))
        fitted = (f"zero-padded to {native} in the stem conv" if model.stem_padding
                  else "at their own size")
        log(f"input    {'x'.join(map(str, model.input_shape))} images (C x H x W), {fitted}; "
            f"the network's own input is {'x'.join(map(str, model.native_shape))}")
    log(f"recipe   {config.optimizer} lr {config.lr:g}, {config.schedule} schedule, "
        f"weight decay {config.weight_decay:g}, batch {config.batch_size}, {_count(config.epochs, 'epoch')}, "
        f"augment {config.augment}, seed {config.seed}")
    remaining = config.epochs - start_epoch
    if remaining > 0:
        log("timing   3 training steps for an estimate (a first run on this machine also "
            "compiles tinypact's kernels: up to about 20 s)")
        step = time_one_step(model, optimizer, loader)
        per_epoch = step * len(loader)
        # Evaluation is a forward pass only: about a third of a training step per image.
        per_epoch += step / 3 * (len(val) if val else 0) / config.batch_size
        total = per_epoch * remaining + step / 3 * len(test) / config.batch_size
        log(f"estimate {_format_duration(step)} per batch -> about {_format_duration(per_epoch)} "
            f"per epoch, {_format_duration(total)} for {_count(remaining, 'epoch')} + test on this machine "
            f"(then export and verification)")
        if total > LONG_RUN_SECONDS and remaining > 1:
            short = max(1, int(LONG_RUN_SECONDS // per_epoch))
            log(f"         that is long for a first try: --epochs {short} takes about "
                f"{_format_duration(per_epoch * short)} (the recipe's first {_count(short, 'epoch')}), "
                f"--limit-train N uses fewer images")
    if start_epoch:
        log(f"resuming {run_dir} after epoch {start_epoch}")
    log(f"run dir  {run_dir}")

    for epoch in range(start_epoch, config.epochs):
        try:
            # Overflow and NaN are detected below and end the run in one line: no NumPy warnings.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                record = _train_one_epoch(model, optimizer, loader, config, epoch, progress)
            _check_weights_finite(model, epoch)
        except FloatingPointError as err:
            kept = (f"{run_dir / CHECKPOINT_NAME} keeps epoch {epoch}" if epoch
                    else "no checkpoint was written")
            raise FloatingPointError(f"{err}; {kept}; start a new run (another --out) with a "
                                     f"smaller --lr") from None
        if scheduler is not None:
            scheduler.step()
        if val is not None:
            record["val_loss"], record["val_error"] = evaluate(model, val, progress=progress,
                                                               desc="validate")
        else:
            record["val_loss"] = record["val_error"] = None
        record["alphas"] = model_alphas(model)
        record["epoch_time"] = round(time.perf_counter() - record.pop("_start"), 3)
        history.append(record)
        _save_epoch(run_dir, model, model_meta, optimizer, scheduler, config, epoch + 1, history)
        last = epoch + 1 == config.epochs or (stop_after is not None and epoch + 1 >= stop_after)
        if last or record["epoch_time"] >= PLOT_EVERY_EPOCH_AFTER:
            write_plots(run_dir, config, history)
        val_text = "" if record["val_error"] is None else f", val error {100 * record['val_error']:.2f}%"
        log(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f}, train error "
            f"{100 * record['train_error']:.2f}%{val_text}, {record['epoch_time']:.1f} s")
        if on_epoch is not None:
            on_epoch(record)
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < config.epochs:
            return FitResult(run_dir, config, model, history)

    test_loss, test_error = evaluate(model, test, progress=progress, desc="test")
    result = {"test_accuracy": 1.0 - test_error, "test_error": test_error, "test_loss": test_loss,
              "test_images": len(test), "epochs": config.epochs,
              "val_error": history[-1]["val_error"] if history else None,
              "train_time": round(sum(r["epoch_time"] for r in history), 3)}
    write_json_atomic(run_dir / RESULT_NAME, result)
    return FitResult(run_dir, config, model, history, test_error, test_loss, len(test),
                     finished=True, test_set=test)


def _train_one_epoch(model, optimizer, loader, config: TrainConfig, epoch: int,
                     progress: bool) -> dict:
    start = time.perf_counter()
    reseed_for_epoch(config.seed, epoch)
    loader.set_epoch(epoch)
    lr = current_lr(optimizer)
    model.train()
    iterator = progress_bar(iter(loader), progress, total=len(loader),
                            desc=f"epoch {epoch + 1}/{config.epochs}")
    bar = iterator if hasattr(iterator, "set_postfix") else None
    total_loss, wrong, seen = 0.0, 0, 0
    for x, labels in iterator:
        logits = model(Tensor(x))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _clamp_alphas(model)
        batch_loss = float(loss.data)
        if not math.isfinite(batch_loss):
            raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {batch_loss})")
        total_loss += batch_loss * len(labels)
        wrong += int((logits.data.argmax(axis=1) != labels).sum())
        seen += len(labels)
        if bar is not None:
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{1 - wrong / seen:.3f}")
    if bar is not None:
        bar.close()
    return {"epoch": epoch + 1, "loss": total_loss / max(seen, 1),
            "train_error": wrong / max(seen, 1), "lr": lr, "_start": start}


def _check_weights_finite(model, epoch: int) -> None:
    """FloatingPointError if a parameter went NaN/inf (the last step can do it with a finite
    loss): such weights must never replace the last good checkpoint."""
    bad = [name for name, param in model.named_parameters() if not np.all(np.isfinite(param.data))]
    if bad:
        raise FloatingPointError(f"training diverged at epoch {epoch + 1} (NaN or infinite "
                                 f"values in {', '.join(bad[:3])})")


def write_plots(run_dir: Path, config: TrainConfig, history: list[dict]) -> None:
    """RUN/error_curves.png (the paper's Fig. 4) and RUN/alphas.png (Fig. 2) from `history`."""
    from tinypact import plots

    title = f"{config.dataset} {config.describe_policy().split(' (')[0]}"
    plots.plot_error_curves(history, run_dir / ERROR_PLOT, title=title)
    learned = config.act_quant in ("pact", "pact+") and config.abits < 32
    plots.plot_alphas(history, run_dir / ALPHA_PLOT, title=f"PACT alpha per layer, {title}",
                      initial=config.alpha_init if learned else None)


def _save_epoch(run_dir: Path, model, model_meta: dict, optimizer, scheduler, config: TrainConfig,
                epoch: int, history: list[dict]) -> None:
    """Checkpoint first (atomic), then metrics.jsonl, which a resume rebuilds from it."""
    meta = {"config": config.to_dict(), "model": model_meta, "epoch": epoch,
            "graph": model.graph(), "alphas": model_alphas(model), "history": history}
    save_checkpoint(run_dir / CHECKPOINT_NAME, meta, model.state_dict(), optimizer.state_dict(),
                    None if scheduler is None else scheduler.state_dict(),
                    {"tinypact": tp_random.get_state()})
    write_metrics(run_dir, history)
