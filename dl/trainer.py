"""`dl.train`: the training loop around the pure steps.

The loop owns everything impure (data order, checkpoints, logging, the progress bar);
`dl.steps` holds the math, `dl.compile` how it is compiled.
"""

import dataclasses
import functools
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from dl import config as config_lib
from dl import data as data_lib
from dl import (
  distributed,
  fairness,
  models,
  objectives,
  optim,
  parallel,
  placement,
  privacy,
  steps,
  writers,
)
from dl.checkpoint import Checkpointer
from dl.data.batches import MemberBatches, ShuffledBatches
from dl.data.transforms import as_model_input, model_input_dtype, normalizer, to_batch_format
from dl.state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class Task:
  """What a config trains: model, objective, optimizer, data (as batch-format numpy arrays)."""

  config: config_lib.TrainConfig
  spec: data_lib.DatasetSpec
  model: nn.Module
  tx: Any
  train: dict[str, np.ndarray]
  eval: dict[str, np.ndarray]
  num_steps: int
  steps_per_epoch: int
  preprocess: Any
  members: tuple[dict[str, Any], ...]
  objective: objectives.Objective = objectives.classification
  group_names: tuple[str, ...] = ()  # of config.group_feature; task.eval["group"] holds ids

  @property
  def ensemble(self) -> bool:
    """Whether the state carries a leading member axis (ensembles and sweeps)."""
    return len(self.members) > 1

  def init_state(self) -> TrainState:
    """The initial state; for an ensemble, member states stacked on a leading axis."""
    if not self.ensemble:
      return self._init_one(self.members[0])
    states = [self._init_one(m) for m in self.members]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

  def _init_one(self, member: dict[str, Any]) -> TrainState:
    key = jax.random.PRNGKey(member["seed"])
    state = create_train_state(
      self.model, self.tx, key, self.spec.input_shape, model_input_dtype(self.spec.input_dtype)
    )
    return self.with_hyperparams(state, member)

  def with_hyperparams(self, state: TrainState, member: dict[str, Any]) -> TrainState:
    """`state` with the member's (or, resuming, the config's) learning rate and weight decay."""
    opt_state = optim.set_hyperparams(
      state.opt_state, learning_rate=member["learning_rate"], weight_decay=member["weight_decay"]
    )
    return state.replace(opt_state=opt_state)

  def batches(self) -> ShuffledBatches | MemberBatches:
    """The training batches: this process's share, one stream per member for ensembles."""
    streams = [
      ShuffledBatches(
        self.train,
        self.config.batch_size,
        seed=m["seed"],
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
      )
      for m in self.members
    ]
    return MemberBatches(streams) if self.ensemble else streams[0]


def build(config) -> Task:
  """Parses `config` and builds the model, optimizer and data it names."""
  c = config_lib.parse(config)
  data_dir = c.data_dir or None
  spec = data_lib.info(c.dataset, data_dir=data_dir)
  if spec.objective != c.objective:
    raise ValueError(
      f"dataset {c.dataset!r} has labels for objective {spec.objective!r}; the config asks "
      f"for {c.objective!r}. Set config.objective={spec.objective!r}."
    )
  train = to_batch_format(
    data_lib.load(c.dataset, c.train_split, data_dir=data_dir), spec.input_key
  )
  eval_arrays = data_lib.load(c.dataset, c.eval_split, data_dir=data_dir)
  evals = to_batch_format(eval_arrays, spec.input_key)
  group_names = ()
  if c.group_feature:  # checked to be a ClassLabel first
    group_names = data_lib.loading.class_names(c.dataset, c.group_feature, data_dir=data_dir)
    evals[fairness.GROUP_KEY] = np.asarray(eval_arrays[c.group_feature], np.int32)
  preprocess = normalizer(train["input"]) if c.normalize else as_model_input
  train["input"], evals["input"] = preprocess(train["input"]), preprocess(evals["input"])
  model_kwargs = {k: v for k, v in c.model.items() if k != "name"}
  model_kwargs.setdefault("dtype", jnp.dtype(c.compute_dtype))
  model = models.create(c.model["name"], num_classes=spec.num_classes, **model_kwargs)
  if c.parallel != "jit" and c.batch_size % jax.device_count():
    raise ValueError(
      f"config.batch_size ({c.batch_size}) must be divisible by the {jax.device_count()} "
      f"devices that config.parallel={c.parallel!r} splits it over."
    )
  steps_per_epoch = len(train["label"]) // c.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f"config.batch_size ({c.batch_size}) must be <= the number of training "
      f"examples ({len(train['label'])}) of {c.dataset!r}."
    )
  num_steps = c.num_train_steps or math.ceil(c.num_epochs * steps_per_epoch)
  tx = optim.create_optimizer(c, max(num_steps // c.grad_accum_steps, 1))
  members = tuple(config_lib.members(c))
  if len(members) > 1 and c.parallel != "jit":
    raise ValueError(
      f"ensembles and sweeps run as one vmapped program with config.parallel='jit'; "
      f"got {c.parallel!r}."
    )
  objective = objectives.create(c.objective, label_smoothing=c.label_smoothing)
  return Task(
    c,
    spec,
    model,
    tx,
    train,
    evals,
    num_steps,
    steps_per_epoch,
    preprocess,
    members,
    objective,
    group_names,
  )


def _stacked(members: tuple[dict[str, Any], ...]) -> dict[str, Any]:
  """Per-member hyperparameters as arrays with a member axis (plain values for one model)."""
  if len(members) == 1:
    return members[0]
  return {k: np.array([m[k] for m in members]) for k in ("learning_rate", "weight_decay")}


def train(config, workdir: str) -> tuple[TrainState, writers.History]:
  """Trains and evaluates the model a config describes; resumes from `workdir` if it can.

  Args:
    config: an `ml_collections.ConfigDict` (e.g. from `dl.default_config()` or an
      experiment's `get_config()`), a dict, or a `dl.TrainConfig`.
    workdir: where checkpoints, `metrics.jsonl`, TensorBoard events and `curves.png` go.
      If it holds checkpoints, training continues from the newest readable one.

  Returns:
    The final state and the history {"train": [...], "eval": [...]} of metric records.

  Raises:
    ValueError: for a bad config or data that does not fit the model.
    FloatingPointError: when the loss or parameters stop being finite; the last
      good checkpoint is kept.
  """
  # Process 0 prepares the data set before the others read it: no two write its files.
  with distributed.primary_first("dl.train: data prepared"):
    task = build(config)
  primary = distributed.is_primary()
  if not primary:  # One progress bar, one metrics.jsonl, one plot: process 0's.
    task = dataclasses.replace(task, config=dataclasses.replace(task.config, progress=False))
  c = task.config
  os.makedirs(workdir, exist_ok=True)
  ckpt = _checkpointer(c, workdir)
  batches = task.batches()
  layout, state = _start(task, ckpt, batches)
  if primary:
    writer = writers.MetricWriter(workdir, tensorboard=c.tensorboard)
  else:
    writer = _NoWriter(os.path.join(workdir, "metrics.jsonl"))
  try:
    state = _loop(task, layout, state, batches, ckpt, writer)
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  distributed.barrier("dl.train: metrics written")  # The others then read process 0's file.
  history = writers.read_history(writer.path)
  if primary:
    writers.plot_history(
      history, os.path.join(workdir, "curves.png"), title=f"{c.model['name']} on {c.dataset}"
    )
  return layout.get_state(state), history


def _checkpointer(c: config_lib.TrainConfig, workdir: str) -> Checkpointer:
  return Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=c.keep_checkpoints,
    best_metric=c.best_metric,
    best_mode=c.best_mode,
  )


def _start(
  task: Task, ckpt: Checkpointer, batches: ShuffledBatches | MemberBatches
) -> tuple[placement.Placement, TrainState]:
  """The layout, and the state laid out in it: restored from `ckpt` if it has one, else new."""
  abstract_state = jax.eval_shape(task.init_state)
  layout = placement.create(task.config.parallel, task.config.mesh_shape, abstract_state)
  restored = ckpt.restore(layout.restore_target(abstract_state))
  if restored is None:
    return layout, layout.init(task.init_state)
  _, state, position = restored
  batches.set_state(position)
  # The config's hyperparameters win over the ones saved in the optimizer state.
  return layout, layout.put_state(task.with_hyperparams(state, _stacked(task.members)))


class _NoWriter:
  """The metric writer of processes other than 0, which writes for all of them."""

  def __init__(self, path: str):
    self.path = path

  def write(self, split: str, step: int, metrics: dict[str, Any]) -> None:
    del split, step, metrics

  def close(self) -> None:
    pass


def _loop(
  task: Task,
  layout: placement.Placement,
  state: TrainState,
  batches: ShuffledBatches | MemberBatches,
  ckpt: Checkpointer,
  writer: writers.MetricWriter,
) -> TrainState:
  """Runs steps from `state.step` to `task.num_steps`, stopping at each event step."""
  c = task.config
  step_fn = _step_fn(task)
  if task.ensemble:
    step_fn = jax.vmap(step_fn)  # members: own state, own batches, one program
  one_step = layout.compile(step_fn, fused=False)
  fused_steps = layout.compile(step_fn, fused=True)
  events = _Events.from_task(task)
  step = int(np.max(jax.device_get(layout.get_state(state).step)))
  pending, last_sync = [], (step, time.perf_counter())
  bar = tqdm.tqdm(
    total=task.num_steps,
    initial=step,
    disable=not c.progress,
    unit="step",
    desc=f"{c.model['name']}/{c.dataset}",
  )
  if step:
    _say(bar, f"resuming at step {step} from {ckpt.directory}")
  with bar:
    while step < task.num_steps:
      k = events.steps_until_next(step)
      if k == 1:
        state, metrics = one_step(state, layout.put_batch(batches.next(), fused=False))
      else:
        state, metrics = fused_steps(state, layout.put_batch(batches.next(k), fused=True))
      pending.append(metrics)  # Stays on device until the next sync.
      step += k
      bar.update(k)
      if not events.any(step):
        continue
      record = _sync(pending, step, last_sync, c.batch_size, len(task.members))
      pending, last_sync = [], (step, time.perf_counter())
      if c.dp_noise_multiplier > 0:
        record["epsilon"] = _epsilon(task, step)
      writer.write("train", step, record)
      bar.set_postfix(_shown(record, task.config.objective))
      eval_metrics = None
      if events.is_eval(step):
        eval_metrics = evaluate(
          layout.get_state(state), task.model, task.eval, c.eval_batch_size, task.objective
        )
        if task.group_names:
          eval_metrics |= fairness.evaluate_groups(
            layout.get_state(state), task.model, task.eval, task.group_names, c.eval_batch_size
          )
        writer.write("eval", step, eval_metrics)
        shown = " ".join(f"{k} {v}" for k, v in _shown(eval_metrics, c.objective).items())
        mean_of = " (mean of members)" if task.ensemble else ""
        _say(bar, f"step {step}: eval {shown}{mean_of}")
      if events.is_checkpoint(step):
        _check_params_finite(layout.get_state(state), step, ckpt)
        ckpt.save(step, layout.get_state(state), batches.get_state(), _mean(eval_metrics))
  return state


def _step_fn(task: Task):
  """The pure step the config asks for: `steps.train_step`, or DP-SGD's."""
  c = task.config
  common = dict(apply_fn=task.model.apply, tx=task.tx, objective=task.objective)
  if c.dp_noise_multiplier == 0:
    return functools.partial(steps.train_step, **common)
  return functools.partial(
    privacy.dp_train_step,
    l2_clip=c.dp_l2_clip,
    noise_multiplier=c.dp_noise_multiplier,
    accum_steps=c.grad_accum_steps,
    **common,
  )


@dataclasses.dataclass(frozen=True)
class _Events:
  """The steps at which the loop logs, evaluates and checkpoints (always at the last step)."""

  log_every: int
  eval_every: int
  ckpt_every: int
  steps_per_dispatch: int
  num_steps: int

  @classmethod
  def from_task(cls, task: Task) -> "_Events":
    c = task.config
    eval_every = c.eval_every_steps or task.steps_per_epoch
    return cls(
      log_every=c.log_every_steps,
      eval_every=eval_every,
      ckpt_every=c.checkpoint_every_steps or eval_every,
      steps_per_dispatch=c.steps_per_dispatch,
      num_steps=task.num_steps,
    )

  def steps_until_next(self, step: int) -> int:
    """How many steps to fuse: up to `steps_per_dispatch`, never past an event."""
    intervals = (self.log_every, self.eval_every, self.ckpt_every)
    return min(
      self.steps_per_dispatch, self.num_steps - step, *(every - step % every for every in intervals)
    )

  def is_eval(self, step: int) -> bool:
    return step == self.num_steps or step % self.eval_every == 0

  def is_checkpoint(self, step: int) -> bool:
    return step == self.num_steps or step % self.ckpt_every == 0

  def any(self, step: int) -> bool:
    return self.is_eval(step) or self.is_checkpoint(step) or step % self.log_every == 0


def _say(bar: tqdm.tqdm, message: str) -> None:
  """Prints a line above the progress bar, once per run (on process 0)."""
  if distributed.is_primary():
    bar.write(message)


def _sync(
  pending, step: int, last_sync: tuple[int, float], batch_size: int, num_members: int
) -> dict[str, Any]:
  """Fetches the per-step metrics since the last sync, checks they are finite, averages them.

  Each entry of `pending` holds, per metric, a scalar (one step) or (k,) (k fused steps),
  with a trailing member axis for ensembles, whose records hold one value per member.
  """
  fetched = parallel.fetch(pending)  # Also when the metrics span several processes.
  per_step = {
    name: np.concatenate([np.reshape(m[name], (-1, num_members)) for m in fetched])
    for name in fetched[0]
  }
  losses = per_step["loss"]
  if not np.all(np.isfinite(losses)):
    first_bad_step, member = np.argwhere(~np.isfinite(losses))[0]
    which = f" (ensemble member {member})" if num_members > 1 else ""
    raise FloatingPointError(
      f"the training loss became {losses[first_bad_step, member]} at step "
      f"{step - len(losses) + first_bad_step + 1}{which}. Training stopped; the last good "
      "checkpoint is kept. Try a lower learning_rate or set grad_clip_norm."
    )
  record = {name: _per_member(values.mean(axis=0)) for name, values in per_step.items()}
  prev_step, prev_time = last_sync
  examples = (step - prev_step) * batch_size * num_members
  record["examples_per_sec"] = examples / (time.perf_counter() - prev_time)
  return record


def _epsilon(task: Task, step: int) -> float:
  """DP-SGD's epsilon after `step` micro-steps: one noisy update per logical batch."""
  c = task.config
  logical_batch = c.batch_size * c.grad_accum_steps
  return privacy.epsilon(
    min(logical_batch / len(task.train["label"]), 1.0),
    c.dp_noise_multiplier,
    step // c.grad_accum_steps,
    c.dp_delta,
  )


def _shown(metrics: dict[str, Any], objective: str) -> dict[str, str]:
  """The loss and the objective's first metric, formatted (means over ensemble members)."""
  means = _mean(metrics)
  name = objectives.METRICS[objective][0]
  return {"loss": f"{means['loss']:.4f}", name: f"{means[name]:.4f}"}


def _per_member(values: np.ndarray) -> float | list[float]:
  """One float for a single model, a list of floats for an ensemble."""
  return float(values[0]) if values.shape == (1,) else [float(v) for v in values]


def _mean(metrics: dict[str, Any] | None) -> dict[str, float] | None:
  """Ensemble records averaged over members (for best-checkpoint choice and the progress bar)."""
  return metrics and {k: float(np.mean(v)) for k, v in metrics.items()}


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def _check_params_finite(state: TrainState, step: int, ckpt: Checkpointer) -> None:
  if not bool(parallel.fetch(_all_finite(state.params))):
    raise FloatingPointError(
      f"parameters are not finite at step {step}; not saving them. The last good checkpoint "
      f"(step {ckpt.latest_step()}) is kept. Try a lower learning_rate or set grad_clip_norm."
    )


def evaluate(
  state: TrainState,
  model: nn.Module,
  arrays: dict[str, np.ndarray],
  batch_size: int = 1000,
  objective: objectives.Objective = objectives.classification,
) -> dict[str, Any]:
  """Mean loss and metrics of `state` on all of `arrays` (exact: padding is masked).

  Args:
    state: a `TrainState` whose params fit `model`; an ensemble's stacked state (leading
      member axis) is evaluated member by member in one vmapped program.
    model: the Flax module.
    arrays: {"input": (N, ...), "label": (N, ...)}, already preprocessed.
    batch_size: examples per compiled call.
    objective: the per-example loss and metrics (`dl.objectives`), e.g. `task.objective`.

  Returns:
    {"loss", **objective's metrics}: floats, or lists of one float per ensemble member.
    With an "mse" metric, also "rmse", its square root.
  """
  eval_fn = _jitted_eval_step(model, np.ndim(state.step) == 1, objective)
  totals = None
  for batch in placement.eval_batches(arrays, min(batch_size, len(arrays["label"])), state):
    sums = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = parallel.fetch(totals)
  count = totals.pop("count")
  means = {name: np.atleast_1d(total / count) for name, total in totals.items()}
  if "mse" in means:
    means["rmse"] = np.sqrt(means["mse"])
  return {name: _per_member(values) for name, values in means.items()}


@functools.cache
def _jitted_eval_step(model: nn.Module, ensemble: bool, objective: objectives.Objective):
  step = functools.partial(steps.eval_step, apply_fn=model.apply, objective=objective)
  return jax.jit(jax.vmap(step, in_axes=(0, None)) if ensemble else step)


def predict(task: Task, state: TrainState, inputs: np.ndarray) -> np.ndarray:
  """Class probabilities (or, unless classifying, raw outputs) for raw inputs in the data
  set's own format.

  Args:
    task: from `dl.build(config)`: says the model, the expected inputs and their scaling.
    state: trained state, e.g. from `dl.train` or `dl.restore`.
    inputs: (N, *example_shape) in the data set's dtype, e.g. uint8 pixels for images.

  Returns:
    (N, num_classes) float32 probabilities when classifying; the model's outputs otherwise
    (regression targets, or next-token logits (N, L, vocab)).
  """
  check_inputs(inputs, task.spec)
  x = task.preprocess(inputs)
  outputs = _jitted_apply(task.model)(state.params, state.model_state, x)
  if task.config.objective != "classification":
    return np.asarray(outputs)
  return np.asarray(jax.nn.softmax(outputs))


@functools.cache
def _jitted_apply(model: nn.Module):
  return jax.jit(lambda params, model_state, x: model.apply({"params": params, **model_state}, x))


def check_inputs(inputs: np.ndarray, spec: data_lib.DatasetSpec) -> None:
  """Raises a ValueError naming the expected shape and dtype when `inputs` do not match."""
  inputs = np.asarray(inputs)
  expected = f"(batch, {', '.join(map(str, spec.input_shape))})"
  if inputs.ndim != len(spec.input_shape) + 1 or inputs.shape[1:] != tuple(spec.input_shape):
    raise ValueError(f"inputs for {spec.name!r} must have shape {expected}; got {inputs.shape}.")
  if inputs.dtype != spec.input_dtype:
    raise ValueError(
      f"inputs for {spec.name!r} must have dtype {np.dtype(spec.input_dtype)} "
      f"(as stored in the data set); got {inputs.dtype}."
    )


def restore(config, workdir: str, step: int | None = None) -> TrainState:
  """Loads the state a `dl.train` run saved in `workdir` (newest readable step by default).

  The state is laid out as `config.parallel` says, whatever the layout it was saved from:
  a checkpoint written by an 8-device FSDP run restores onto one device, or onto another
  mesh shape.

  Raises:
    FileNotFoundError: when `workdir` holds no checkpoint.
  """
  task = config if isinstance(config, Task) else build(config)
  c = task.config
  abstract_state = jax.eval_shape(task.init_state)
  layout = placement.create(c.parallel, c.mesh_shape, abstract_state)
  ckpt = _checkpointer(c, workdir)
  try:
    restored = ckpt.restore(layout.restore_target(abstract_state), step)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(
      f"no checkpoint in {ckpt.directory}; train first with dl.train(config, {workdir!r})."
    )
  return restored[1]
