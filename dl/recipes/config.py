"""Training configuration: one typed, frozen dataclass; `ConfigDict`s are built from it.

Experiments write `get_config()` returning `default_config()` with some fields changed;
`parse_config` turns any `ConfigDict` or mapping back into a validated `TrainConfig`, and
`dl.build(config)` turns that into parts for `dl.fit`. The names a config may use are
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
from dl.training import optim, placement, profile

DTYPES = ("float32", "bfloat16")
DATA_PATHS = ("auto", "memory", "stream")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything `dl.train` needs. Zero means "derived" where noted.

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
    seed: seeds init, dropout and data order.
    batch_size: training examples per step.
    eval_batch_size: examples per evaluation step (the last batch is padded and masked).
    num_epochs: passes over the training data, used when `num_train_steps` is 0.
    num_train_steps: total optimizer steps (0: from `num_epochs`).
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
    steps_per_dispatch: train steps fused into one compiled call (lax.scan).
    unroll_steps: write the fused steps out as straight-line code instead of a loop: longer
      compile, much faster for convolutional models on CPU (`dl.training.compile.scan_steps`).
    log_every_steps: how often train metrics are averaged and written.
    eval_every_steps: how often to evaluate (0: once per epoch).
    checkpoint_every_steps: how often to checkpoint (0: at each evaluation).
    checkpoint_every_seconds: also checkpoint when this much wall time has passed since the
      last checkpoint (checked at log steps; 0: never). SIGTERM and SIGINT always save one.
    async_checkpoints: write checkpoints in the background (False: each save blocks).
    keep_checkpoints: the latest checkpoints kept (the best one is kept too).
    best_metric: validation metric that picks the best checkpoint: "loss" or one of the
      objective's metrics ("": the objective's choice: "accuracy" when classifying, else
      "loss").
    best_mode: "max" or "min" of `best_metric` ("": as the objective says).
    parallel: how the step is compiled: "jit" (one device), "pmap", "data" (mesh, data
      parallel), "fsdp" (mesh, params and optimizer state sharded) or "mesh" (the mesh
      `mesh_shape` gives, with a tensor-parallel "model" axis if it names one).
    mesh_shape: the mesh over axes data, fsdp and model, e.g. "data=2,fsdp=2,model=2" (-1:
      the rest); overrides the "data"/"fsdp" presets.
    dcn_mesh_shape: the part of each mesh axis spanning slices or hosts, e.g. "data=2".
    sharding_rules: ((regex on a state path, axis names per dimension), ...) for parameters
      the model does not annotate (`dl.core.parallel`); first match wins.
    logical_axis_rules: ((logical name, mesh axes), ...) before `dl.core.parallel.LOGICAL_RULES`.
    max_replicated_mb: stop before training when a parameter larger than this would be
      replicated on a mesh that could shard it.
    compute_dtype: "float32", or "bfloat16" for mixed precision (params stay float32).
    ensemble_size: train this many models at once (one `jax.vmap`ped program), member i
      with seed `seed + i` (its own init, dropout and data order).
    sweep_learning_rate: one member per value, e.g. (1e-3, 3e-3, 1e-2); () for none.
    sweep_weight_decay: one member per value; with `sweep_learning_rate`, paired in order.
    dp_noise_multiplier: DP-SGD noise standard deviation over `dp_l2_clip` (0: no DP-SGD);
      train records then carry the `epsilon` spent (see `dl.trust.privacy`).
    dp_l2_clip: DP-SGD clips each example's gradient to this L2 norm.
    dp_delta: the delta at which DP-SGD's epsilon is reported.
    dp_sampling: "poisson" (each example joins a batch with probability
      batch_size * grad_accum_steps / N; batches padded and masked: what the accountant
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
    peak_flops_per_device: the peak FLOP/s of one device for the train records' mfu (0: from
      `dl.training.flops.PEAKS` by device kind; on CPU, a matmul measured once per process).
    profile_steps: "START:NUM", e.g. "10:5": a `jax.profiler` trace of NUM steps from step
      START into `<workdir>/profile` (`dl.training.profile.ProfileHook`; "": none).
    compilation_cache_dir: JAX's persistent compilation cache directory for this run ("":
      JAX's setting; the JAX_COMPILATION_CACHE_DIR environment variable wins when set).
    progress: show a progress bar.
    tensorboard: also write TensorBoard event files.
  """

  dataset: str = "digits"
  data_dir: str = ""
  train_split: str = "train"
  validation_split: str = ""
  validation_fraction: float = 0.1
  test_split: str = "test"
  model: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"name": "cnn"})
  objective: str = "classification"
  seed: int = 0
  batch_size: int = 128
  eval_batch_size: int = 1000
  num_epochs: float = 10.0
  num_train_steps: int = 0
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
  steps_per_dispatch: int = 1
  unroll_steps: bool = False
  log_every_steps: int = 50
  eval_every_steps: int = 0
  checkpoint_every_steps: int = 0
  checkpoint_every_seconds: float = 0.0
  async_checkpoints: bool = True
  keep_checkpoints: int = 3
  best_metric: str = ""
  best_mode: str = ""
  parallel: str = "jit"
  mesh_shape: str = ""
  dcn_mesh_shape: str = ""
  sharding_rules: tuple = ()
  logical_axis_rules: tuple = ()
  max_replicated_mb: float = 64.0
  compute_dtype: str = "float32"
  ensemble_size: int = 1
  sweep_learning_rate: tuple = ()
  sweep_weight_decay: tuple = ()
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
  peak_flops_per_device: float = 0.0
  profile_steps: str = ""
  compilation_cache_dir: str = ""
  progress: bool = True
  tensorboard: bool = True

  def __post_init__(self):
    _check_types(self)
    _derive_best(self)
    _check_values(self)


def default_config() -> ml_collections.ConfigDict:
  """Returns the defaults of `TrainConfig` as a locked `ConfigDict` (model left open)."""
  # The fields' own defaults: "" for the derived ones (best_metric, best_mode) stays "".
  defaults = {
    f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
    for f in dataclasses.fields(TrainConfig)
  }
  config = ml_collections.ConfigDict(defaults)
  config.lock()
  # The model's keys depend on the model, so they may be added; `parse_config` checks them.
  config.model.unlock()
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
  known = [f.name for f in dataclasses.fields(TrainConfig)]
  for key in values:
    if key not in known:
      hint = difflib.get_close_matches(key, known, n=1)
      did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
      raise ValueError(f"unknown config key {key!r}.{did_you_mean} Valid keys: {', '.join(known)}.")
  return TrainConfig(**values)


def _check_types(c: TrainConfig) -> None:
  for field in dataclasses.fields(c):
    value, expected = getattr(c, field.name), field.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
      object.__setattr__(c, field.name, float(value))
    elif expected is tuple and isinstance(value, list):
      object.__setattr__(c, field.name, tuple(value))
    elif field.name == "model":
      if not isinstance(value, Mapping) or "name" not in value:
        raise ValueError(
          f"config.{field.name} must be a mapping with a 'name' key, "
          f"e.g. {{'name': 'cnn'}}; got {value!r}."
        )
    elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
      raise ValueError(
        f"config.{field.name} must be {expected.__name__}; got {value!r} ({type(value).__name__})."
      )


def _derive_best(c: TrainConfig) -> None:
  """Fills in `best_metric` and `best_mode` left empty ("") from the objective."""
  _require(
    c.objective in objectives.OBJECTIVES,
    "objective",
    f"one of {tuple(objectives.OBJECTIVES)}",
    c.objective,
  )
  objective = objectives.OBJECTIVES[c.objective]
  if not c.best_metric:
    object.__setattr__(c, "best_metric", objective.select)
  if not c.best_mode:
    object.__setattr__(c, "best_mode", objective.mode(c.best_metric))


def _check_values(c: TrainConfig) -> None:
  _require(c.batch_size > 0, "batch_size", "an integer > 0", c.batch_size)
  _require(c.eval_batch_size > 0, "eval_batch_size", "an integer > 0", c.eval_batch_size)
  _require(c.learning_rate > 0, "learning_rate", "a number > 0", c.learning_rate)
  _require(
    c.num_epochs > 0 or c.num_train_steps > 0,
    "num_epochs",
    "> 0 (or num_train_steps > 0)",
    c.num_epochs,
  )
  _require(
    c.num_train_steps >= 0, "num_train_steps", ">= 0 (0: from num_epochs)", c.num_train_steps
  )
  _require(c.steps_per_dispatch > 0, "steps_per_dispatch", "an integer > 0", c.steps_per_dispatch)
  _require(c.grad_accum_steps > 0, "grad_accum_steps", "an integer > 0", c.grad_accum_steps)
  _require(c.log_every_steps > 0, "log_every_steps", "an integer > 0", c.log_every_steps)
  _require(c.keep_checkpoints > 0, "keep_checkpoints", "an integer > 0", c.keep_checkpoints)
  for key in ("warmup_steps", "eval_every_steps", "checkpoint_every_steps"):
    _require(getattr(c, key) >= 0, key, "an integer >= 0", getattr(c, key))
  for key in ("weight_decay", "grad_clip_norm", "checkpoint_every_seconds"):
    _require(getattr(c, key) >= 0, key, "a number >= 0", getattr(c, key))
  _require(0 <= c.label_smoothing < 1, "label_smoothing", "in [0, 1)", c.label_smoothing)
  _require(0 <= c.momentum < 1, "momentum", "in [0, 1)", c.momentum)
  _require(
    c.optimizer in optim.OPTIMIZERS, "optimizer", f"one of {tuple(optim.OPTIMIZERS)}", c.optimizer
  )
  _require(
    c.schedule in optim.SCHEDULES, "schedule", f"one of {tuple(optim.SCHEDULES)}", c.schedule
  )
  _require(
    0 <= c.validation_fraction < 1, "validation_fraction", "in [0, 1)", c.validation_fraction
  )
  _require(c.ensemble_size > 0, "ensemble_size", "an integer > 0", c.ensemble_size)
  for key in ("sweep_learning_rate", "sweep_weight_decay"):
    values = getattr(c, key)
    _require(
      all(isinstance(v, (int, float)) and v >= 0 for v in values),
      key,
      "a tuple of numbers >= 0",
      values,
    )
  sizes = {len(v) for v in (c.sweep_learning_rate, c.sweep_weight_decay) if v}
  if c.ensemble_size > 1:
    sizes.add(c.ensemble_size)
  _require(
    len(sizes) <= 1,
    "ensemble_size",
    "equal to the length of each sweep_* tuple",
    (c.ensemble_size, c.sweep_learning_rate, c.sweep_weight_decay),
  )
  _require(
    c.dp_noise_multiplier >= 0, "dp_noise_multiplier", "a number >= 0", c.dp_noise_multiplier
  )
  _require(c.dp_l2_clip > 0, "dp_l2_clip", "a number > 0", c.dp_l2_clip)
  _require(0 < c.dp_delta < 1, "dp_delta", "in (0, 1)", c.dp_delta)
  _require(
    c.dp_sampling in ("poisson", "shuffle"), "dp_sampling", "'poisson' or 'shuffle'", c.dp_sampling
  )
  _require(c.dp_max_batch_size >= 0, "dp_max_batch_size", "an integer >= 0", c.dp_max_batch_size)
  _require(c.dp_accountant in ("pld", "rdp"), "dp_accountant", "'pld' or 'rdp'", c.dp_accountant)
  _require(
    not (c.dp_accountant == "rdp" and c.dp_max_batch_size and c.dp_sampling == "poisson"),
    "dp_accountant",
    "'pld' when dp_max_batch_size truncates Poisson batches (RDP has no truncated event)",
    c.dp_accountant,
  )
  _require(c.parallel in placement.MODES, "parallel", f"one of {placement.MODES}", c.parallel)
  _require(c.compute_dtype in DTYPES, "compute_dtype", f"one of {DTYPES}", c.compute_dtype)
  _require(c.best_mode in ("max", "min"), "best_mode", "'max' or 'min'", c.best_mode)
  metrics = ("loss", *objectives.OBJECTIVES[c.objective].metrics)
  _require(
    c.best_metric in metrics,
    "best_metric",
    f"one of {metrics} for objective {c.objective!r}",
    c.best_metric,
  )
  _require(c.data_path in DATA_PATHS, "data_path", f"one of {DATA_PATHS}", c.data_path)
  _require(
    c.data_memory_budget_mb > 0, "data_memory_budget_mb", "a number > 0", c.data_memory_budget_mb
  )
  _require(c.data_workers >= 0, "data_workers", "an integer >= 0", c.data_workers)
  augment_lib.from_names(c.augment)  # raises naming an unknown augmentation
  _require(
    c.peak_flops_per_device >= 0,
    "peak_flops_per_device",
    "a number >= 0 (0: from the device kind)",
    c.peak_flops_per_device,
  )
  if c.profile_steps:
    profile.parse_steps(c.profile_steps)  # raises naming the expected form
  if c.objective != "classification":
    _require(
      not any(name.startswith("mixup") for name in c.augment),
      "augment",
      "free of 'mixup' unless classifying",
      c.augment,
    )
    _require(c.label_smoothing == 0, "label_smoothing", "0 unless classifying", c.label_smoothing)
    _require(not c.group_feature, "group_feature", "'' unless classifying", c.group_feature)


def _require(ok: bool, key: str, expected: str, got: Any) -> None:
  if not ok:
    raise ValueError(f"config.{key} must be {expected}; got {got!r}.")
