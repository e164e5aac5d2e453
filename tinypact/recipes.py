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

The network is a separate choice (`model`; default: the data set's own, MODEL_FOR_DATASET). A
network on another data set (`recipe(dataset, model=...)`) trains with its own data set's
optimizer settings (optimizer, learning rate, momentum, Adam's eps, weight decay, alpha's rate:
what suits the architecture) and with the data set's epochs, batch size, augmentation and
validation hold-out (what suits the data); its schedule is cosine over those epochs (a step
schedule is tied to the epoch count it was made for).

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
    model: str | None = None  # None: the data set's own network (tinypact.models.MODEL_FOR_DATASET)
    wbits: int = 2
    abits: int = 2
    first_last_bits: int = 8
    shortcut_bits: int = 8  # resnet20's residual stream (the follow-up paper's shortcuts)
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
    def model_name(self) -> str:
        """The network: `model`, else the data set's own."""
        from tinypact.models import MODEL_FOR_DATASET

        return self.model or MODEL_FOR_DATASET[self.dataset]

    @property
    def is_float(self) -> bool:
        return self.wbits >= 32 and self.abits >= 32

    @property
    def float_layers(self) -> list[str]:
        """The parts kept in float (32 bits): what makes a model not exportable to integers."""
        names = {"wbits": "weights", "abits": "activations", "first_last_bits": "first/last layers"}
        if self.model_name == "resnet20":
            names["shortcut_bits"] = "shortcuts"
        return [label for field_name, label in names.items() if getattr(self, field_name) >= 32]

    def policy_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `tinypact.quant.Policy`."""
        return {"wbits": self.wbits, "abits": self.abits, "first_last_bits": self.first_last_bits,
                "shortcut_bits": self.shortcut_bits, "weight_quant": self.weight_quant,
                "act_quant": self.act_quant, "alpha_init": self.alpha_init}

    def describe_policy(self) -> str:
        if self.is_float:
            return "float32 (no quantization)"
        fl = "float" if self.first_last_bits >= 32 else f"{self.first_last_bits}-bit"
        shortcuts = ""
        if self.model_name == "resnet20":
            sc = "float" if self.shortcut_bits >= 32 else f"{self.shortcut_bits}-bit"
            shortcuts = f", shortcuts {sc}"
        return (f"W{self.wbits}A{self.abits} ({self.weight_quant} weights, {self.act_quant} "
                f"activations; first/last layer weights {fl}{shortcuts})")

    def validate(self) -> None:
        """Raise ValueError (one line) for settings that make no sense."""
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        from tinypact.quant.functional import check_bits

        from tinypact.models import MODELS

        if self.model is not None and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        for name in ("wbits", "abits", "first_last_bits", "shortcut_bits"):
            check_bits(getattr(self, name), _option(name))
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTATIONS,
                   "weight_quant": WEIGHT_QUANTS, "act_quant": ACT_QUANTS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{_option(name)} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.svhn_extra and self.dataset != "svhn":
            raise ValueError(f"svhn_extra (--svhn-extra, SVHN's extra split) needs dataset svhn, "
                             f"got {self.dataset!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_option(name)} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.val_size < 0:
            raise ValueError(f"--val-size must be >= 0, got {self.val_size}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{_option(name)} must be at least 1, got {value}")


def _option(field_name: str) -> str:
    """The command-line option of a TrainConfig field: batch_size -> --batch-size."""
    return "--" + field_name.replace("_", "-")


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


# What a network brings from its own data set's recipe to another data set (module docstring).
MODEL_FIELDS = ("optimizer", "lr", "momentum", "adam_eps", "weight_decay", "alpha_lr")
# The data set each network was designed for: its recipe is the network's own.
HOME_DATASET = {"fmnist": "fashion-mnist", "svhn": "svhn", "resnet20": "cifar10"}
# Settings of a (model, data set) pair beyond that rule. resnet20 on the short Fashion-MNIST
# schedules: PACT's alpha starts at 4, not 10. With SGD alpha moves only where activations reach
# it (its gradient) and by weight decay; from 10 at 2 bits almost no batch-normalised activation
# reaches the first level (10 / 3 / 2), and in a few epochs decay cannot bring alpha down (the
# paper's 200 epochs can): the network would stay silent.
PAIR_RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("resnet20", "fashion-mnist"): dict(alpha_init=4.0),
    ("resnet20", "sample"): dict(alpha_init=4.0),
}


def recipe(dataset: str, **overrides: Any) -> TrainConfig:
    """The default TrainConfig of `dataset` (and of `model`, when given: the module docstring's
    rule), with `overrides` (None values are ignored)."""
    from tinypact.models import MODEL_FOR_DATASET

    if dataset not in RECIPES:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    values = dict(RECIPES[dataset])
    model = overrides.get("model")
    if model is not None and model in HOME_DATASET and model != MODEL_FOR_DATASET[dataset]:
        home = TrainConfig.from_dict(RECIPES[HOME_DATASET[model]])
        values.update({name: getattr(home, name) for name in MODEL_FIELDS}, schedule="cosine")
        values.update(PAIR_RECIPES.get((model, dataset), {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("model") == MODEL_FOR_DATASET[dataset]:
        values["model"] = None  # the data set's own network: runs made before `model` existed
    return TrainConfig.from_dict(values)
