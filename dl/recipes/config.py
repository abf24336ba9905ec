"""Training configuration: one typed, frozen dataclass; `ConfigDict`s are built from it.

Experiments write `get_config()` returning `default_config()` with some fields changed;
`parse_config` turns any `ConfigDict` or mapping back into a validated `TrainConfig`, and
`dl.build(config)` turns that into parts for `dl.fit`; its loop options are a nested
`dl.FitConfig` (`config.fit`), the one `dl.fit` takes. The names a config may use are
declared by the modules that implement them: optimizers and schedules (`dl.training.optim`),
objectives (`dl.core.objectives`), compile modes (`dl.training.placement`), local data sets
(`dl.data.builders`).
"""

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import ml_collections

from dl.core import objectives
from dl.data import augment as augment_lib
from dl.training import optim, profile
from dl.training.options import FitConfig, require

DTYPES = ("float32", "bfloat16")
DATA_PATHS = ("auto", "memory", "stream")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything `dl.train` needs. Zero means "derived" where noted.

  The loop's options (length, batches, events, members, compile mode) are the nested
  `fit` (`dl.FitConfig`, written once there): `config.fit.batch_size`, `config.fit.num_steps`
  (0: `config.fit.num_epochs` passes over the training data), `config.fit.seed`,
  `config.fit.log_every`, `config.fit.eval_every`, `config.fit.parallel`,
  `config.fit.sweep` ({"learning_rate": (1e-3, 3e-3)}: one member per value), ... On the
  command line: `--config.fit.batch_size=64 --config.fit.num_epochs=5`.

  Attributes:
    dataset: TFDS name: a local one ("digits", "mnist5k", "breast_cancer") or a catalog one.
    data_dir: TFDS data directory ("" means $DL_DATA_DIR or TFDS's default).
    train_split: split to train on.
    validation_split: split that chooses the best checkpoint ("": the data set's
      "validation" split if it has one, else `validation_fraction` of `train_split`, held
      out by a fixed seeded permutation, the same for every seed).
    validation_fraction: held out of `train_split` when there is no validation split.
    test_split: split scored once, at the end, on the best checkpoint ("": none).
    model: {"name": ..., **hyperparameters}; `num_classes` comes from the dataset (the
      number of classes, of regression targets, or the vocabulary size).
    objective: what the model is trained to do (`dl.core.objectives`): "classification"
      (class-id labels), "regression" (float targets) or "next_token" (language models).
    optimizer: an optax optimizer, one of `dl.training.optim.OPTIMIZERS`.
    learning_rate: peak learning rate.
    schedule: learning-rate schedule after warmup, one of `dl.training.optim.SCHEDULES`.
    warmup_steps: linear warmup from 0 to `learning_rate`.
    weight_decay: decoupled weight decay (adamw, lamb, lion) or L2 added to grads (others).
    momentum: momentum of "momentum" and "rmsprop".
    injected_hyperparams: the optimizer's hyperparameters, beyond the learning rate and
      weight decay, that live in its state as arrays ("momentum"; "b1", "b2"), so a search
      can give each member its own (`dl.search` sets this for the space it searches).
    grad_clip_norm: clip gradients to this global norm (0: no clipping).
    grad_accum_steps: accumulate gradients over this many steps per update (optax.MultiSteps).
    label_smoothing: smoothing of the one-hot targets (classification only).
    normalize: scale uint8 images to [0, 1]; standardise float features by train statistics.
    compute_dtype: "float32", or "bfloat16" for mixed precision (params stay float32).
    dp_noise_multiplier: DP-SGD noise standard deviation over `dp_l2_clip` (0: no DP-SGD);
      train records then carry the `epsilon` spent (see `dl.trust.privacy`).
    dp_l2_clip: DP-SGD clips each example's gradient to this L2 norm.
    dp_delta: the delta at which DP-SGD's epsilon is reported.
    dp_sampling: "poisson" (each example joins a batch with probability
      fit.batch_size * grad_accum_steps / N; batches padded and masked: what the accountant
      assumes) or "shuffle" (fixed-size shuffled batches, whose records carry
      `epsilon_if_poisson`, a figure their sampling is not covered by).
    dp_max_batch_size: rows of a padded Poisson batch (0: chosen so that any of the run's
      steps overflows with probability <= 1%; overflows are truncated and accounted for).
    dp_accountant: "pld" (privacy loss distributions, tight; accounts for the truncation)
      or "rdp" (Renyi DP, looser; untruncated Poisson sampling).
    group_feature: a ClassLabel feature of the eval data (e.g. "age_band" of "credit") whose
      groups get their own eval metrics (`dl.trust.fairness`): accuracy per group and, for binary
      tasks, TPR, FPR, demographic parity and equalized odds differences ("": none).
    data_path: how training batches are read: "memory" (the split decoded once into host
      arrays), "stream" (read record by record through a grain pipeline, `dl.data.streaming`:
      for splits larger than memory) or "auto" (stream when the split's in-memory size
      exceeds `data_memory_budget_mb`). Without augmentation both give the same batches.
    data_memory_budget_mb: the in-memory size above which "auto" streams a split.
    data_workers: grain worker processes that read, decode and augment streamed batches (0:
      in the training process; each worker starts in ~2.5 s).
    augment: per-example augmentations seeded from (seed, epoch, example index), in order
      (`dl.data.augment.AUGMENTATIONS`): "crop:P" (pad P pixels, crop back), "translate:S"
      (shift up to S pixels), "flip" (horizontal, with probability 0.5; not for digits),
      "mixup:A" (Beta(A, A) mixup within each batch; classification only).
    profile_steps: "START:NUM", e.g. "10:5": a `jax.profiler` trace of NUM steps from step
      START into `<workdir>/profile` (`dl.training.profile.ProfileHook`; "": none).
    fit: how the loop runs (`dl.FitConfig`); `fit.best_metric` may name the objective's
      metrics ("": the objective's choice: "accuracy" when classifying, else "loss").
  """

  dataset: str = "digits"
  data_dir: str = ""
  train_split: str = "train"
  validation_split: str = ""
  validation_fraction: float = 0.1
  test_split: str = "test"
  model: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"name": "cnn"})
  objective: str = "classification"
  optimizer: str = "adamw"
  learning_rate: float = 1e-3
  schedule: str = "cosine"
  warmup_steps: int = 0
  weight_decay: float = 1e-4
  momentum: float = 0.9
  injected_hyperparams: tuple = ()
  grad_clip_norm: float = 0.0
  grad_accum_steps: int = 1
  label_smoothing: float = 0.0
  normalize: bool = True
  compute_dtype: str = "float32"
  dp_noise_multiplier: float = 0.0
  dp_l2_clip: float = 1.0
  dp_delta: float = 1e-5
  dp_sampling: str = "poisson"
  dp_max_batch_size: int = 0
  dp_accountant: str = "pld"
  group_feature: str = ""
  data_path: str = "auto"
  data_memory_budget_mb: float = 2048.0
  data_workers: int = 0
  augment: tuple = ()
  profile_steps: str = ""
  fit: FitConfig = dataclasses.field(default_factory=FitConfig)

  def __post_init__(self):
    _check_types(self)
    _check_values(self)


def default_config() -> ml_collections.ConfigDict:
  """Returns the defaults of `TrainConfig` as a locked `ConfigDict` (model and fit.sweep
  left open), the loop's options nested under `fit`."""
  defaults = {
    f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
    for f in dataclasses.fields(TrainConfig)
  }
  defaults["fit"] = dataclasses.asdict(defaults["fit"])
  config = ml_collections.ConfigDict(defaults)
  config.lock()
  # The model's keys depend on the model, and a sweep's on the hyperparameters it sweeps,
  # so they may be added; `parse_config` checks them.
  config.model.unlock()
  config.fit.sweep.unlock()
  return config


def parse_config(
  config: ml_collections.ConfigDict | Mapping[str, Any] | TrainConfig,
) -> TrainConfig:
  """Validates `config` and returns it as a `TrainConfig`.

  Raises:
    ValueError: naming the key, the expected value and what came, for unknown keys,
      wrong types and out-of-range values.
  """
  if isinstance(config, TrainConfig):
    return config
  values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  fit_values = dict(values.pop("fit", None) or {})
  _check_keys(values, [f.name for f in dataclasses.fields(TrainConfig)], "")
  _check_keys(fit_values, [f.name for f in dataclasses.fields(FitConfig)], "fit.")
  for field in dataclasses.fields(FitConfig):
    if field.name in fit_values:
      fit_values[field.name] = _coerced(field, fit_values[field.name], "config.fit.")
  try:
    fit = FitConfig(**fit_values)
  except ValueError as e:  # FitConfig names its own field; here it lives under config.fit
    raise ValueError(f"config.fit.{e}") from None
  return TrainConfig(**values, fit=fit)


def _check_keys(values: Mapping[str, Any], known: list[str], prefix: str) -> None:
  """Raises for a key `known` lacks, naming the closest one (a loop option: `fit.<key>`)."""
  fit_names = [f"fit.{f.name}" for f in dataclasses.fields(FitConfig)]
  names = [f"{prefix}{k}" for k in known] + (fit_names if not prefix else [])
  for key in values:
    if key in known:
      continue
    hint = difflib.get_close_matches(f"{prefix}{key}", names, n=1)
    hint = hint or difflib.get_close_matches(f"fit.{key}", fit_names, n=1, cutoff=0.8)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(
      f"unknown config key {prefix + key!r}.{did_you_mean} Valid keys: {', '.join(names)}."
    )


def _coerced(field: dataclasses.Field, value: Any, prefix: str) -> Any:
  """`value` as `field`'s type: an int for a float, a list as a tuple; raises for others."""
  expected = field.type
  if expected is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(value, list):
    return tuple(value)
  if isinstance(value, Mapping):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
  if isinstance(expected, type) and (
    not isinstance(value, expected) or (expected is int and isinstance(value, bool))
  ):
    raise ValueError(
      f"{prefix}{field.name} must be {expected.__name__}; got {value!r} ({type(value).__name__})."
    )
  return value


def _check_types(c: TrainConfig) -> None:
  for field in dataclasses.fields(c):
    value = getattr(c, field.name)
    if field.name == "model":
      if not isinstance(value, Mapping) or "name" not in value:
        raise ValueError(
          f"config.{field.name} must be a mapping with a 'name' key, "
          f"e.g. {{'name': 'cnn'}}; got {value!r}."
        )
    else:
      object.__setattr__(c, field.name, _coerced(field, value, "config."))


def _check_values(c: TrainConfig) -> None:
  """The fields' ranges (the loop's own, `c.fit`, checked themselves: `dl.FitConfig`)."""
  require(
    c.objective in objectives.OBJECTIVES,
    "config.objective",
    f"one of {tuple(objectives.OBJECTIVES)}",
    c.objective,
  )
  require(c.learning_rate > 0, "config.learning_rate", "a number > 0", c.learning_rate)
  require(c.grad_accum_steps > 0, "config.grad_accum_steps", "an integer > 0", c.grad_accum_steps)
  require(c.warmup_steps >= 0, "config.warmup_steps", "an integer >= 0", c.warmup_steps)
  for key in ("weight_decay", "grad_clip_norm"):
    require(getattr(c, key) >= 0, f"config.{key}", "a number >= 0", getattr(c, key))
  require(0 <= c.label_smoothing < 1, "config.label_smoothing", "in [0, 1)", c.label_smoothing)
  require(0 <= c.momentum < 1, "config.momentum", "in [0, 1)", c.momentum)
  require(
    c.optimizer in optim.OPTIMIZERS,
    "config.optimizer",
    f"one of {tuple(optim.OPTIMIZERS)}",
    c.optimizer,
  )
  require(
    c.schedule in optim.SCHEDULES, "config.schedule", f"one of {tuple(optim.SCHEDULES)}", c.schedule
  )
  require(
    0 <= c.validation_fraction < 1,
    "config.validation_fraction",
    "in [0, 1)",
    c.validation_fraction,
  )
  _check_privacy(c)
  require(c.compute_dtype in DTYPES, "config.compute_dtype", f"one of {DTYPES}", c.compute_dtype)
  metrics = ("loss", *objectives.OBJECTIVES[c.objective].metrics)
  require(
    c.fit.best_metric in ("", *metrics),
    "config.fit.best_metric",
    f"one of {metrics} for objective {c.objective!r} ('': the objective's choice)",
    c.fit.best_metric,
  )
  require(c.data_path in DATA_PATHS, "config.data_path", f"one of {DATA_PATHS}", c.data_path)
  require(
    c.data_memory_budget_mb > 0,
    "config.data_memory_budget_mb",
    "a number > 0",
    c.data_memory_budget_mb,
  )
  require(c.data_workers >= 0, "config.data_workers", "an integer >= 0", c.data_workers)
  augment_lib.from_names(c.augment)  # raises naming an unknown augmentation
  if c.profile_steps:
    profile.parse_steps(c.profile_steps)  # raises naming the expected form
  if c.objective != "classification":
    require(
      not any(name.startswith("mixup") for name in c.augment),
      "config.augment",
      "free of 'mixup' unless classifying",
      c.augment,
    )
    require(
      c.label_smoothing == 0, "config.label_smoothing", "0 unless classifying", c.label_smoothing
    )
    require(not c.group_feature, "config.group_feature", "'' unless classifying", c.group_feature)


def _check_privacy(c: TrainConfig) -> None:
  """The DP-SGD fields' ranges."""
  require(
    c.dp_noise_multiplier >= 0,
    "config.dp_noise_multiplier",
    "a number >= 0",
    c.dp_noise_multiplier,
  )
  require(c.dp_l2_clip > 0, "config.dp_l2_clip", "a number > 0", c.dp_l2_clip)
  require(0 < c.dp_delta < 1, "config.dp_delta", "in (0, 1)", c.dp_delta)
  require(
    c.dp_sampling in ("poisson", "shuffle"),
    "config.dp_sampling",
    "'poisson' or 'shuffle'",
    c.dp_sampling,
  )
  require(
    c.dp_max_batch_size >= 0, "config.dp_max_batch_size", "an integer >= 0", c.dp_max_batch_size
  )
  require(
    c.dp_accountant in ("pld", "rdp"), "config.dp_accountant", "'pld' or 'rdp'", c.dp_accountant
  )
  require(
    not (c.dp_accountant == "rdp" and c.dp_max_batch_size and c.dp_sampling == "poisson"),
    "config.dp_accountant",
    "'pld' when dp_max_batch_size truncates Poisson batches (RDP has no truncated event)",
    c.dp_accountant,
  )
