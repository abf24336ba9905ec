"""`dl.train(config, workdir)`: a config turned into parts, then `dl.fit`.

`build(config)` names the data set's splits (or streams them) and makes them, with the
model, objective, optimizer and step (DP-SGD's, on Poisson-sampled batches, when
`dp_noise_multiplier` > 0), into a `dl.Task` through `dl.task`, which holds out validation
data and fits the preprocessing on the training inputs alone. `train` runs it through the
one loop with the hooks the config asks for (the privacy budget, slice metrics).
Nothing here is needed to train user parts: `dl.fit(dl.task(...), workdir)` does that.
"""

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dl import data as data_lib
from dl import models
from dl.core import distributed, objectives, writers
from dl.data import augment, sources, streaming
from dl.models.adapters import Linen
from dl.recipes import config as config_lib
from dl.training import loop, optim, options, profile, protocols, steps
from dl.training.task import Task, task
from dl.trust import fairness, privacy

log = logging.getLogger(__name__)


def build(config) -> Task:
  """Parses `config` and builds the task it names: model, objective, optimizer, data, step.

  The validation data is the config's `validation_split`, else the data set's "validation"
  split, else `validation_fraction` of the training split (`sources.split_validation`). The
  test split is kept for one score at the end. Each split is decoded into memory, or
  streamed (`dl.data.streaming`) when `config.data_path` says so or, for "auto", when its
  in-memory size exceeds `config.data_memory_budget_mb`; both give the same batches and the
  same scores.
  """
  return _build(config_lib.parse_config(config))


def _build(c: config_lib.TrainConfig) -> Task:
  data_dir = c.data_dir or None
  spec = data_lib.info(c.dataset, data_dir=data_dir)
  if spec.objective != c.objective:
    raise ValueError(
      f"dataset {c.dataset!r} has labels for objective {spec.objective!r}; the config asks "
      f"for {c.objective!r}. Set config.objective={spec.objective!r}."
    )
  if c.group_feature:  # raises unless it is a class label
    data_lib.loading.class_names(c.dataset, c.group_feature, data_dir=data_dir)
  validation_split = c.validation_split or ("validation" if "validation" in spec.splits else "")
  model_kwargs = {k: v for k, v in c.model.items() if k != "name"}
  model_kwargs.setdefault("dtype", jnp.dtype(c.compute_dtype))
  module = models.create(c.model["name"], num_classes=spec.num_classes, **model_kwargs)
  train = _train(c, spec)
  # A hold-out of a streamed split is streamed too when it exceeds the budget on its own.
  stream_held_out = isinstance(train, streaming.Streaming) and (
    not validation_split and _streams(c, c.train_split, c.validation_fraction)
  )
  built = task(
    model=Linen(module),
    objective=objectives.create(c.objective, label_smoothing=c.label_smoothing),
    optimizer=optax.identity(),  # replaced below: its schedule needs the training size
    train=train,
    eval=_split(c, spec, validation_split) if validation_split else None,
    test=_split(c, spec, c.test_split) if c.test_split else None,
    validation_fraction=c.validation_fraction,
    normalize=c.normalize,
    augment=augment.from_names(c.augment),
    train_step=_train_step(c),
    class_names=_class_names(c, spec),
    name=f"{c.model['name']}/{c.dataset}",
    data_dir=data_dir,
    group_feature=c.group_feature,
    stream_held_out=stream_held_out,
    config=dataclasses.asdict(c),
  )
  updates = max(_num_steps(c, len(built.train)) // c.grad_accum_steps, 1)
  built = dataclasses.replace(built, optimizer=_optimizer(c, updates))
  if _poisson(c):
    if not isinstance(built.train, sources.InMemory):
      raise ValueError(
        "dp_sampling='poisson' samples from arrays in memory; this config streams its "
        "training split. Set data_path='memory' (or dp_sampling='shuffle')."
      )
    arrays = built.train.arrays
    built = dataclasses.replace(
      built,
      train=privacy.PoissonData(
        arrays,
        max_batch_size=_max_batch_size(c, len(built.train), updates),
        accum_steps=c.grad_accum_steps,
      ),
    )
  return built


def _optimizer(c: config_lib.TrainConfig, updates: int) -> optax.GradientTransformation:
  """The config's optimizer, its schedule over the run's `updates`."""
  return optim.create_optimizer(
    c.optimizer,
    learning_rate=c.learning_rate,
    num_steps=updates,
    schedule=c.schedule,
    warmup_steps=c.warmup_steps,
    weight_decay=c.weight_decay,
    momentum=c.momentum,
    grad_clip_norm=c.grad_clip_norm,
    grad_accum_steps=c.grad_accum_steps,
    injected=c.injected_hyperparams,
  )


def _streams(c: config_lib.TrainConfig, split: str = "", fraction: float = 1.0) -> bool:
  """Whether `split` (default: the training split), or `fraction` of it, is streamed: as
  `data_path` says, or by size for "auto". Splits with `group_feature` are decoded (their
  group ids are a decoded column)."""
  if split and c.group_feature:
    return False
  if c.data_path != "auto":
    return c.data_path == "stream"
  split = split or c.train_split
  size = fraction * streaming.in_memory_bytes(c.dataset, split, data_dir=c.data_dir or None)
  budget = c.data_memory_budget_mb * 2**20
  if size > budget:
    log.info(
      "streaming %s %s: %.0f MiB in memory > data_memory_budget_mb %.0f",
      c.dataset,
      split,
      size / 2**20,
      c.data_memory_budget_mb,
    )
  return size > budget


def _poisson(c: config_lib.TrainConfig) -> bool:
  return c.dp_noise_multiplier > 0 and c.dp_sampling == "poisson"


def _max_batch_size(c: config_lib.TrainConfig, num_examples: int, updates: int) -> int:
  """The padded logical batch of a Poisson-sampled run: the config's, else one that any of
  the run's `updates` draws overflows with probability at most 1%."""
  multiple = c.grad_accum_steps * math.lcm(8, jax.device_count())
  size = c.dp_max_batch_size or privacy.max_batch_size(
    num_examples, c.fit.batch_size * c.grad_accum_steps / num_examples, updates, multiple=multiple
  )
  if size % multiple:
    raise ValueError(
      f"dp_max_batch_size ({size}) must be a multiple of grad_accum_steps x lcm(8, devices) "
      f"= {multiple}."
    )
  return size


def _train(c: config_lib.TrainConfig, spec: data_lib.DatasetSpec):
  """The training split: its name for `dl.task` to decode, or a `Streaming` of it."""
  if not _streams(c):
    return (c.dataset, c.train_split)
  source = data_lib.loading.data_source(c.dataset, c.train_split, data_dir=c.data_dir or None)
  return streaming.Streaming(source, input_key=spec.input_key, num_workers=c.data_workers)


def _split(c: config_lib.TrainConfig, spec: data_lib.DatasetSpec, split: str):
  """An evaluation split: its name for `dl.task` to decode, or a `Streaming` of it."""
  if not _streams(c, split):
    return (c.dataset, split)
  source = data_lib.loading.data_source(c.dataset, split, data_dir=c.data_dir or None)
  return streaming.Streaming(source, input_key=spec.input_key)


def _num_steps(c: config_lib.TrainConfig, num_train: int) -> int:
  steps_per_epoch = num_train // c.fit.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f"config.fit.batch_size ({c.fit.batch_size}) must be <= the number of training "
      f"examples ({num_train}) of {c.dataset!r}."
    )
  return c.fit.total_steps(steps_per_epoch)


def _train_step(c: config_lib.TrainConfig):
  """The pure step the config asks for: `dl.train_step`, or DP-SGD's."""
  if c.dp_noise_multiplier == 0:
    return steps.train_step
  return functools.partial(
    privacy.dp_train_step,
    l2_clip=c.dp_l2_clip,
    noise_multiplier=c.dp_noise_multiplier,
    accum_steps=c.grad_accum_steps,
    # Poisson batches vary in size: the sum is divided by the expected micro-batch.
    expected_batch_size=c.fit.batch_size if _poisson(c) else None,
  )


def _class_names(c: config_lib.TrainConfig, spec: data_lib.DatasetSpec) -> tuple[str, ...]:
  if c.objective != "classification":
    return ()
  try:
    return data_lib.loading.class_names(c.dataset, "label", data_dir=c.data_dir or None)
  except data_lib.DatasetError:
    return tuple(str(i) for i in range(spec.num_classes))


def fit_config(config, task: Task) -> options.FitConfig:
  """How `dl.train` runs `task`: `config.fit`, its `num_steps` derived from the training data."""
  return _fit_config(config_lib.parse_config(config), task)


def _fit_config(c: config_lib.TrainConfig, task: Task) -> options.FitConfig:
  return dataclasses.replace(c.fit, num_steps=_num_steps(c, len(task.train)))


def hooks(config, task: Task, workdir: str | None = None) -> list[protocols.Hook]:
  """The hooks the config asks for: the privacy budget (DP-SGD), slice metrics, a profile
  of some steps (into `<workdir>/profile`)."""
  return _hooks(config_lib.parse_config(config), task, workdir)


def _hooks(c: config_lib.TrainConfig, task: Task, workdir: str | None) -> list[protocols.Hook]:
  out = []
  if c.profile_steps:
    if workdir is None:
      raise ValueError(
        f"config.profile_steps ({c.profile_steps!r}) writes into the run's workdir; pass "
        "workdir to from_config.hooks (dl.train does)."
      )
    start, num = profile.parse_steps(c.profile_steps)
    out.append(profile.ProfileHook(start, num, logdir=os.path.join(workdir, "profile")))
  if c.dp_noise_multiplier > 0:
    num_examples = len(task.train)
    truncation = getattr(task.train, "max_batch_size", None) if c.dp_accountant == "pld" else None
    out.append(
      privacy.BudgetHook(
        num_examples=num_examples,
        sampling_rate=min(c.fit.batch_size * c.grad_accum_steps / num_examples, 1.0),
        noise_multiplier=c.dp_noise_multiplier,
        delta=c.dp_delta,
        accum_steps=c.grad_accum_steps,
        max_batch_size=truncation,
        accountant_name=c.dp_accountant,
        poisson=_poisson(c),
      )
    )
  if c.group_feature:
    names = data_lib.loading.class_names(c.dataset, c.group_feature, data_dir=c.data_dir or None)
    out.append(fairness.SliceMetrics(task, names, c.fit.eval_batch_size))
  return out


def train(config, workdir: str) -> tuple[Any, writers.History]:
  """Trains and evaluates the model a config describes; resumes from `workdir` if it can.

  Args:
    config: an `ml_collections.ConfigDict` (e.g. from `dl.default_config()` or an
      experiment's `get_config()`), a dict, or a `dl.TrainConfig`.
    workdir: where checkpoints, `metrics.jsonl`, TensorBoard events and `curves.png` go.
      If it holds checkpoints, training continues from the newest readable one.

  Returns:
    The final state and the history {"train", "eval", "test"} of metric records: "eval"
    on validation data, "test" scored once at the end on the best validation checkpoint.

  Raises:
    ValueError: for a bad config or data that does not fit the model.
    FloatingPointError: when the loss or parameters stop being finite; the last
      good checkpoint is kept.
  """
  # Process 0 prepares the data set before the others read it: no two write its files.
  c = config_lib.parse_config(config)
  with distributed.primary_first("dl.train: data prepared"):
    built = _build(c)
  return loop.fit(built, workdir, _fit_config(c, built), hooks=_hooks(c, built, workdir))


def restore(
  task_or_config,
  workdir: str,
  step: int | str | None = "best",
  *,
  fit: options.FitConfig | None = None,
  **overrides,
) -> Any:
  """Loads the state a run saved in `workdir`: a config run's (`dl.train`) or a parts
  run's (`dl.fit` of a `dl.Task`, or any `dl.training.loop.Trainable`).

  The state is laid out as `config.fit.parallel` (or the `parallel=` override) says,
  whatever the layout it was saved from: a checkpoint written by an 8-device FSDP run
  restores onto one device, or onto another mesh.

  Args:
    task_or_config: the config the run trained (a `ConfigDict`, a dict or a
      `dl.TrainConfig`), or the parts it trained (a `dl.Task`).
    workdir: the run's directory.
    step: "best" (the best on validation, the one the test was scored on; the newest when
      none was chosen), None for the newest readable checkpoint, or a step number.
    fit: the `dl.FitConfig` a parts run was fitted with (its members and layout shape the
      state); None: `dl.FitConfig()`. A config run's is `config.fit`.
    **overrides: `dl.FitConfig` fields that replace those, e.g. `parallel="fsdp"` to lay
      the state out on a mesh.

  Returns:
    The state (members stacked on a leading axis for an ensemble).

  Raises:
    FileNotFoundError: when `workdir` holds no checkpoint.
  """
  if not isinstance(task_or_config, (config_lib.TrainConfig, ml_collections.ConfigDict, Mapping)):
    return loop.restore(task_or_config, workdir, fit, step=step, **overrides)
  c = config_lib.parse_config(task_or_config)
  with distributed.primary_first("dl.restore: data prepared"):
    built = _build(c)
  return loop.restore(built, workdir, _fit_config(c, built), step=step, **overrides)
