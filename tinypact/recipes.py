"""Training recipes: one `TrainConfig` per data set, the paper's where the paper gives one.

- svhn (paper Appendix B): Adam lr 1e-3, eps 1e-5, lr halved every 50 epochs, L2 1e-7,
  batch 128, 200 epochs; brightness/contrast jitter as in tensorpack's svhn-digit-dorefa.
  Trains on `train` (73,257 images); `svhn_extra` (`--svhn-extra`) adds `extra` (531,131) as
  tensorpack's example does (docs/paper-differences.md).
- cifar10 (paper Appendix B): SGD momentum 0.9, lr 0.1 scaled x0.1 at epochs 60 and 120,
  L2 2e-4, batch 128, 200 epochs, pad-4 random crop + horizontal flip.
- fashion-mnist / sample (ours; the data sets this machine can reach): Adam with cosine decay,
  sized so that `python -m tinypact.train` (2-bit PACT on the bundled sample) finishes in a few
  minutes on a 2-core machine.

PACT's alpha gets the same L2 decay as the weights (the paper: lambda_alpha = weight decay works
well) unless `alpha_decay` is set, and the same learning rate unless `alpha_lr` is set.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("sample", "fashion-mnist", "cifar10", "svhn")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "multistep", "cosine")
AUGMENTATIONS = ("none", "crop-flip", "crop", "jitter")
WEIGHT_QUANTS = ("dorefa", "sawb", "sawb0")
ACT_QUANTS = ("pact", "pact+", "dorefa", "relu")


@dataclass
class TrainConfig:
    """Everything that decides the weights a run ends with (saved in config.json and checkpoints).

    Bits: `wbits`/`abits` for interior layers, `first_last_bits` for the first conv's and the
    last linear layer's weights; 32 means float. `svhn_extra`: train SVHN on train + extra
    (tensorpack's svhn-digit-dorefa does) instead of train alone.
    """

    dataset: str = "sample"
    wbits: int = 2
    abits: int = 2
    first_last_bits: int = 8
    weight_quant: str = "dorefa"
    act_quant: str = "pact"
    alpha_init: float = 10.0
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    alpha_decay: float | None = None
    alpha_lr: float | None = None
    schedule: str = "cosine"
    step_size: int = 50
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    augment: str = "none"
    val_size: int = 5000
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0
    svhn_extra: bool = False
    data_dir: str | None = None
    verify_checksums: bool = True  # False: use local data files whose MD5 is not the official one

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown train config fields {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def with_defaults(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """A saved config with every field it lacks set to its default, so a run made before a
        field existed resumes (and compares) as if it had used the default."""
        return {**cls().to_dict(), **saved}

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def train_split(self) -> str:
        """The split training (and the validation hold-out) is drawn from."""
        return "train+extra" if self.svhn_extra else "train"

    @property
    def is_float(self) -> bool:
        return self.wbits >= 32 and self.abits >= 32

    def policy_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `tinypact.quant.Policy`."""
        return {"wbits": self.wbits, "abits": self.abits, "first_last_bits": self.first_last_bits,
                "weight_quant": self.weight_quant, "act_quant": self.act_quant,
                "alpha_init": self.alpha_init}

    def describe_policy(self) -> str:
        if self.is_float:
            return "float32 (no quantization)"
        fl = "float" if self.first_last_bits >= 32 else f"{self.first_last_bits}-bit"
        return (f"W{self.wbits}A{self.abits} ({self.weight_quant} weights, {self.act_quant} "
                f"activations; first/last layer weights {fl})")

    def validate(self) -> None:
        """Raise ValueError (one line) for settings that make no sense."""
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        from tinypact.quant.functional import check_bits

        for name in ("wbits", "abits", "first_last_bits"):
            check_bits(getattr(self, name), name)
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTATIONS,
                   "weight_quant": WEIGHT_QUANTS, "act_quant": ACT_QUANTS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.svhn_extra and self.dataset != "svhn":
            raise ValueError(f"svhn_extra (--svhn-extra, SVHN's extra split) needs dataset svhn, "
                             f"got {self.dataset!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {self.val_size}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


# The recipes. Only the fields that differ from TrainConfig's defaults are listed.
RECIPES: dict[str, dict[str, Any]] = {
    "svhn": dict(dataset="svhn", optimizer="adam", lr=1e-3, adam_eps=1e-5, schedule="step",
                 step_size=50, gamma=0.5, weight_decay=1e-7, batch_size=128, epochs=200,
                 augment="jitter", val_size=5000),
    "cifar10": dict(dataset="cifar10", optimizer="sgd", lr=0.1, momentum=0.9,
                    schedule="multistep", milestones=[60, 120], gamma=0.1, weight_decay=2e-4,
                    batch_size=128, epochs=200, augment="crop-flip", val_size=5000),
    # Adam moves a parameter by at most about lr per step, so alpha (init 10, the paper's Fig. 2)
    # gets its own larger lr to reach its useful range (2-4) within the first epoch of a short run.
    "fashion-mnist": dict(dataset="fashion-mnist", optimizer="adam", lr=2e-3, adam_eps=1e-8,
                          alpha_lr=0.05, schedule="cosine", weight_decay=1e-5, batch_size=128,
                          epochs=3, augment="none", val_size=5000),
    "sample": dict(dataset="sample", optimizer="adam", lr=2e-3, adam_eps=1e-8, alpha_lr=0.1,
                   schedule="cosine", weight_decay=1e-5, batch_size=64, epochs=8,
                   augment="none", val_size=500),
}


def recipe(dataset: str, **overrides: Any) -> TrainConfig:
    """The default TrainConfig of `dataset`, with `overrides` (None values are ignored)."""
    if dataset not in RECIPES:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    values = dict(RECIPES[dataset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
