"""A supervised run as parts: model, objective, optimizer, data, and the step that joins them.

  task = dl.task(
      model=dl.Linen(TwoTower(), inputs=("user", "item")),   # or a Linen module, or dl.NNX
      objective=my_objective,            # (outputs, batch) -> (loss_B, {name: (B,)})
      optimizer=optax.adamw(1e-3),
      train={"user": u, "item": i, "label": y},   # or ("digits", "train"), or a data source
  )
  state, history = dl.fit(task, "/tmp/run", num_steps=500, batch_size=64)

`Task` is what `dl.fit` trains (a `dl.training.protocols.Trainable`); `dl.build(config)` makes
the same from a config.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl import inference
from dl.core import objectives
from dl.data import checks, sources, streaming
from dl.data.augment import Augment
from dl.data.streaming import Streaming
from dl.data.transforms import GROUP_KEY, Preprocess, preprocessed
from dl.models.adapters import Model, as_model
from dl.training import steps
from dl.training.state import TrainState, create_train_state

Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """The parts of a supervised run, ready to train (see `task` to build one).

  Attributes:
    model: `init`/`apply` of the model (`dl.Linen`, `dl.NNX`).
    objective: the per-example loss and metrics (`dl.core.objectives.Objective`).
    optimizer: any optax `GradientTransformation`.
    train: the training data (`dl.data.sources.InMemory`, `dl.data.streaming.Streaming`, or
      any `TrainData` part).
    eval: validation data that chooses the best checkpoint: arrays, or a split read in
      batches (`checks.CheckedSplit` over a `Streaming`); None for none.
    test: test data in the same forms, scored once at the end, or None.
    inputs: the raw inputs the model takes, {key: (example shape, dtype)}, as `dl.predict`
      and exports accept them.
    preprocess: raw -> model input, per input key that has one.
    train_step: the pure step, `(state, batch, *, model, tx, objective, axis_name=None) ->
      (state, metrics)`: `dl.train_step`, or e.g. DP-SGD's (`dl.trust.privacy.dp_train_step`).
    class_names: one name per class, for exports (empty: indices).
    name: shown on the progress bar and the plot.
    config: what built the task (a config's fields), for run cards; {} for user parts.
    limits: {"classes": {key: outputs}, "ids": {key: size}}: the ranges the door checks
      (`dl.data.checks`), from the objective and the model.
    check_batches: whether each training batch is checked as it is read (data parts that
      are not held whole: streams, a user's own part); arrays are checked once, at `task`.
  """

  model: Model
  objective: objectives.Objective
  optimizer: optax.GradientTransformation
  train: sources.TrainData
  eval: Arrays | checks.CheckedSplit | None = None
  test: Arrays | checks.CheckedSplit | None = None
  inputs: Mapping[str, tuple[tuple[int, ...], np.dtype]] = dataclasses.field(default_factory=dict)
  preprocess: Mapping[str, Preprocess] = dataclasses.field(default_factory=dict)
  train_step: Callable[..., tuple[Any, dict]] = steps.train_step
  class_names: tuple[str, ...] = ()
  name: str = "model"
  config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  limits: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
  check_batches: bool = False

  @property
  def selection(self) -> tuple[str, str] | None:
    """The objective's best-checkpoint metric and its direction, when there is validation."""
    if self.eval is None:
      return None
    return self.objective.select, self.objective.mode(self.objective.select)

  def mode(self, metric: str) -> str:
    """ "min" or "max": which direction of `metric` is better (the objective says)."""
    return self.objective.mode(metric)

  def _example_batch(self) -> dict[str, jax.Array]:
    example = self.train.example()
    return {k: jnp.zeros(example[k].shape, example[k].dtype) for k in self.model.inputs}

  def init(self, seed: int) -> TrainState:
    """The initial state of the member seeded with `seed`."""
    batch = self._example_batch()
    return create_train_state(self.model, self.optimizer, jax.random.PRNGKey(seed), batch)

  def param_axes(self) -> dict[str, tuple | None]:
    """{parameter path: the axis names the model annotated it with, or None}; {} for a
    model that cannot say (a `dl.Model` without `axes`)."""
    axes = getattr(self.model, "axes", None)
    return axes(self._example_batch()) if axes else {}

  def flops_per_step(self, batch_size: int) -> float | None:
    """Model FLOPs of one step (forward and backward) on `batch_size` examples, when the
    model counts them: its `train_flops(batch_shape)` (`dl.models.MLP`, `DecoderLM`), given
    the shape of a batch of its first input. None for models that do not say."""
    count = getattr(getattr(self.model, "module", self.model), "train_flops", None)
    if count is None:
      return None
    shape = self.train.example()[self.model.inputs[0]].shape[1:]
    return float(count((batch_size, *shape)))

  def step(self, state: TrainState, batch, *, axis_name: str | None = None):
    """`train_step` with this task's model, optimizer and objective bound."""
    return self.train_step(
      state,
      batch,
      model=self.model,
      tx=self.optimizer,
      objective=self.objective,
      axis_name=axis_name,
    )

  def batches(self, batch_size: int, *, seed: int, shard_index: int = 0, num_shards: int = 1):
    """Shuffled training batches of the member seeded with `seed` (this process's share)."""
    batches = self.train.batches(
      batch_size, seed=seed, shard_index=shard_index, num_shards=num_shards
    )
    if self.check_batches:
      return checks.CheckedBatches(batches, "training data", **self.limits)
    return batches

  def evaluate(
    self, state, split: str = "eval", batch_size: int = inference.EVAL_BATCH_SIZE
  ) -> dict | None:
    """`dl.evaluate` on the "eval" (validation) or "test" arrays; None if there are none."""
    arrays = {"eval": self.eval, "test": self.test}[split]
    if arrays is None:
      return None
    return inference.evaluate(state, self.model, arrays, batch_size, self.objective)


def task(
  *,
  model: Any,
  objective: Any,
  optimizer: optax.GradientTransformation,
  train: Any,
  eval: Any = None,  # noqa: A002  (Keras and TFDS say "eval" too)
  test: Any = None,
  validation_fraction: float = 0.1,
  preprocess: Mapping[str, Preprocess] | None = None,
  normalize: bool = True,
  augment: Sequence[Any] = (),
  train_step: Callable[..., tuple[Any, dict]] = steps.train_step,
  class_names: tuple[str, ...] = (),
  name: str = "",
  data_dir: str | None = None,
  group_feature: str = "",
  stream_held_out: bool = False,
  config: Mapping[str, Any] | None = None,
) -> Task:
  """Builds a `Task` from a user's parts; each may come in the form at hand.

  Args:
    model: a Flax Linen module (fed `batch["input"]`), `dl.Linen(module, inputs=(...))`
      for other inputs, or `dl.NNX(lambda rngs: Module(..., rngs=rngs), inputs=(...))`.
    objective: `(outputs, batch) -> (loss_B, {name: (B,)})`, or a `dl.core.objectives.Objective`
      that also says which metrics are better when lower.
    optimizer: any optax `GradientTransformation` (with its own schedule).
    train: a dict of arrays with one leading example axis, a (TFDS name, split) pair such as
      ("digits", "train"), a data source (`tfds.data_source(...)`, decoded once into memory),
      a `dl.data.streaming.Streaming` over a source (read in batches, for data larger than
      memory; its hold-out is `dl.data.streaming.hold_out`), or a data part of your own
      (`dl.data.sources.TrainData`: `len`, `example()`, `batches(...)`), kept as it is (no
      preprocessing, augmentation or hold-out).
    eval: validation data in the same forms. None: `validation_fraction` of `train` (arrays, a
      name or a stream), held out by a fixed seeded permutation
      (`dl.data.sources.split_validation`).
    test: test data in the same forms, scored once at the end; None for none.
    validation_fraction: held out of `train` when `eval` is None (0: no validation, no best
      checkpoint).
    preprocess: {input key: `dl.data.Preprocess`} applied to every split (and by
      `dl.predict` and exports). None: for a TFDS name, or a stream of TFDS records
      (`input_key` set) without a preprocess of its own, `Preprocess.fit` of the training
      inputs after the validation hold-out (`dl.data.streaming.fit_preprocess` for a
      stream); otherwise no preprocessing.
    normalize: whether a fitted `preprocess` scales pixels and standardises float inputs
      (False: it only casts; see `Preprocess.fit`).
    augment: transforms of the training batches (`dl.data.augment`: `RandomCrop`,
      `RandomTranslate`, `HorizontalFlip`, `Mixup`, or any grain `RandomMap`), seeded from
      (seed, epoch, example index), so a resumed run sees the same batches.
    train_step: the pure step (see `Task.train_step`).
    class_names: one name per class, for exports.
    name: shown on the progress bar and the plot.
    data_dir: TFDS data directory for named data sets.
    group_feature: a class-label feature of a named data set (or of a stream's records)
      whose int32 ids the validation and test arrays carry as "group", for slice metrics
      (`dl.trust.fairness.SliceMetrics`); the training data drops them. "": none.
    stream_held_out: whether the validation examples held out of a streamed `train` are
      read in batches too (a hold-out larger than memory); False: decoded into memory.
    config: what built the task, recorded in run cards.

  Raises:
    ValueError: naming the part that does not fit and what was expected.
  """
  model = as_model(model)
  objective = objectives.as_objective(objective)
  if not (
    callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
  ):
    raise TypeError(
      f"optimizer must be an optax GradientTransformation (e.g. optax.adamw(1e-3)); got "
      f"{type(optimizer).__name__}."
    )
  load = functools.partial(_split, data_dir=data_dir, group_feature=group_feature)
  augmentation = Augment.create(augment) or getattr(train, "augment", None)
  part = train if sources.is_train_data(train) and not isinstance(train, sources.InMemory) else None
  if part is not None and not isinstance(part, Streaming) and (preprocess or augment):
    raise ValueError(
      "a data part of your own is used as it is: preprocess and augment its batches yourself "
      f"and pass preprocess=None, augment=(); got preprocess for {sorted(preprocess or ())} "
      f"and {len(augment)} augmentations."
    )
  if isinstance(part, Streaming):  # raw inputs here; preprocessed and augmented as it reads
    if eval is None and validation_fraction > 0:
      part, eval = streaming.hold_out(part, validation_fraction)
      eval = eval if stream_held_out else streaming.read_all(eval, group_feature)
    train_arrays = part.with_options(preprocess={}, augment=None).example()
    if preprocess is None:
      preprocess = part.preprocess or _fitted_stream(part, normalize)
    part = part.with_options(preprocess=preprocess, augment=augmentation)
  else:
    train_arrays = part.example() if part is not None else load(train, "training data")
  eval_arrays = None if eval is None else load(eval, "validation data")
  given = {"training data": train_arrays, "validation data": eval_arrays}  # rows as given
  if eval is None and validation_fraction > 0 and part is None:
    train_arrays, eval_arrays = sources.split_validation(train_arrays, validation_fraction)
  if group_feature:  # group ids are for evaluation per group, not for training
    train_arrays = {k: v for k, v in train_arrays.items() if k != GROUP_KEY}
  test_arrays = None if test is None else load(test, "test data")
  given["test data"] = test_arrays
  missing = [k for k in model.inputs if k not in train_arrays]
  if missing:
    raise ValueError(
      f"the model reads {list(model.inputs)}; the training data has {sorted(train_arrays)}. "
      "Name the model's inputs with dl.Linen(module, inputs=(...)) or dl.NNX(..., inputs=(...))."
    )
  raw = {k: (tuple(train_arrays[k].shape[1:]), train_arrays[k].dtype) for k in model.inputs}
  if preprocess is None:
    named = isinstance(train, tuple)
    preprocess = {"input": Preprocess.fit(train_arrays["input"], normalize)} if named else {}
  train_arrays = _preprocessed(train_arrays, preprocess)
  limits = _limits(model, objective, {k: v[:2] for k, v in train_arrays.items()})
  for what, arrays in given.items():  # labels and ids are not preprocessed: checked as given
    if isinstance(arrays, Mapping):
      checks.check_ranges(arrays, what, **limits)
  splits = {"training data": train_arrays}
  for what, arrays in (("validation data", eval_arrays), ("test data", test_arrays)):
    if isinstance(arrays, Streaming):
      splits[what] = checks.CheckedSplit(arrays.with_options(preprocess=preprocess), what, **limits)
    elif arrays is not None:
      splits[what] = _preprocessed(arrays, preprocess)
  return Task(
    model=model,
    objective=objective,
    optimizer=optimizer,
    train=part if part is not None else sources.InMemory(train_arrays, augmentation),
    eval=splits.get("validation data"),
    test=splits.get("test data"),
    inputs=raw,
    preprocess=dict(preprocess),
    train_step=train_step,
    class_names=tuple(class_names),
    name=name or type(getattr(model, "module", model)).__name__,
    config=dict(config or {}),
    limits=limits,
    check_batches=part is not None,
  )


def _split(data: Any, what: str, *, data_dir: str | None, group_feature: str) -> Arrays | Streaming:
  """A split as arrays checked at the door (numbers, finite), or a stream kept as it is."""
  if isinstance(data, Streaming):
    return data.with_options(augment=None)
  arrays = sources.as_arrays(data, what, data_dir=data_dir, group_feature=group_feature)
  checks.check_values(arrays, what)
  return arrays


def _fitted_stream(data: Streaming, normalize: bool) -> dict[str, Preprocess]:
  """{"input": the fitted `Preprocess`} of a stream of TFDS records; {} for other records."""
  if data.input_key is None:
    return {}
  return {"input": streaming.fit_preprocess(data, normalize)}


def _limits(model: Model, objective: objectives.Objective, batch: Arrays) -> dict[str, dict]:
  """The ranges the door checks: {"classes": {key: the model's outputs}, "ids": {key: size}}.

  From one abstract forward pass of the model on `batch`, two examples (`jax.eval_shape`:
  nothing is computed), which also checks that the outputs keep the example axis and finds
  Linen `nn.Embed` layers that read an input as it comes.
  """
  ids = dict(getattr(model, "ids", {}) or {})

  def forward(batch):
    def interceptor(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Embed) and context.method_name == "__call__" and args:
        for key in model.inputs:
          if args[0] is batch[key]:
            ids.setdefault(key, context.module.num_embeddings)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      params, model_state = model.init(jax.random.PRNGKey(0), batch)
      return model.apply(params, model_state, batch, train=False)[0]

  shapes = {k: (v.shape[1:], v.dtype) for k, v in batch.items()}
  try:
    outputs = jax.eval_shape(forward, {k: jnp.asarray(v) for k, v in batch.items()})
  except Exception as e:  # the user's model: say which data it was given, keep its error
    raise ValueError(
      f"the model could not run on an example of the training data, {{key: (example shape, "
      f"dtype)}} = {shapes}: {type(e).__name__}: {e}"
    ) from e
  size = len(next(iter(batch.values())))
  for path, leaf in jax.tree_util.tree_flatten_with_path(outputs)[0]:
    if not leaf.shape or leaf.shape[0] != size:
      raise ValueError(
        f"the model's outputs{jax.tree_util.keystr(path)} for {size} examples of shapes "
        f"{shapes} have shape {leaf.shape}: every output needs a leading example axis. An "
        "input of shape (N,) has no feature axis: reshape it to (N, 1)."
      )
  # The objective's own checks (one value per example, label shapes) at the door too.
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  jax.eval_shape(objective, outputs, abstract)
  classes = {}
  if objective.classes and hasattr(outputs, "shape") and len(outputs.shape) > 1:
    classes[objective.classes] = int(outputs.shape[-1])
  return {"classes": classes, "ids": ids}


def _preprocessed(arrays: Arrays, preprocess: Mapping[str, Preprocess]) -> Arrays:
  """Each array preprocessed if it has a `Preprocess`; 64-bit values as 32-bit ones."""
  return preprocessed(arrays, preprocess)
