"""The one training loop: `fit(trainable, workdir, config)`.

Everything impure lives here, once: starting or resuming from the newest readable
checkpoint, the schedule of log, eval and checkpoint steps, fusing steps between them, the
finiteness checks, the lifetime of the checkpointer and the metric writer, the progress bar,
the test score at the end and the plot. What is trained is a part passed in (`Trainable`):
a supervised `dl.Task`, a GAN, a federated round, a user's own step. Features that need the
loop (a privacy budget in the logs, slice metrics at evaluation) come in as `Hook`s.

Each train record carries, beside the metrics, `examples_per_sec`, `model_flops_per_step`,
`tflops_per_sec_per_device`, `mfu` and `compile_seconds` (`dl.training.flops`), each over
the steps since the previous record: the first record's interval holds the compilation
that its `compile_seconds` reports. Each dispatch is a `jax.profiler.StepTraceAnnotation`
named "train" (`dl.training.profile.ProfileHook` records a trace of some steps).
"""

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from dl import inference
from dl.core import distributed, parallel, writers
from dl.core.checkpoint import Checkpointer
from dl.core.lock import WorkdirLock, WorkdirLockedError
from dl.data.batches import MemberBatches
from dl.training import feed, flops, optim, placement, preemption
from dl.training.options import FitConfig

Metrics = dict[str, Any]
log = logging.getLogger(__name__)


class Batches(Protocol):
  """A checkpointable stream of training batches (e.g. `dl.data.batches.ShuffledBatches`)."""

  steps_per_epoch: int

  def next(self, num_batches: int | None = None) -> dict[str, np.ndarray]:
    """The next batch, or `num_batches` batches stacked on a new leading axis."""
    ...

  def get_state(self) -> Any:
    """The position in the stream, as a checkpoint stores it."""
    ...

  def set_state(self, state: Any) -> None:
    """Moves to a position `get_state` returned."""
    ...


class Trainable(Protocol):
  """What `fit` trains: a pure step over a state pytree, and the batches that feed it.

  Attributes:
    name: shown on the progress bar and the plot.
    selection: (eval metric, "min" or "max") that picks the best checkpoint, or None.
  """

  name: str
  selection: tuple[str, str] | None

  def init(self, seed: int) -> Any:
    """One member's initial state (a pytree with a `step`); traced by `jax.eval_shape`."""

  def step(self, state: Any, batch: Any) -> tuple[Any, Metrics]:
    """The pure step. Takes `axis_name=` too where it supports `parallel="pmap"`.

    (Optional: `examples_per_step(batch_size) -> int`, the examples one step consumes, for
    the records' examples_per_sec, `batch_size` when absent; `flops_per_step(batch_size)
    -> float | None`, one member's analytic model FLOPs of a step, for the records'
    model_flops_per_step and mfu (None or absent: XLA's count of the one-step program);
    `param_axes() -> {parameter path: axis names}`, the model's own sharding annotations,
    used on a mesh.)
    """

  def batches(self, batch_size: int, *, seed: int, shard_index: int, num_shards: int) -> Batches:
    """This process's training batches for the member seeded with `seed`."""

  def evaluate(self, state: Any, split: str, batch_size: int) -> Metrics | None:
    """Metrics of `state` on "eval" (validation) or "test"; None when there is no such data.

    Optional, too: `mode(metric) -> "min" | "max"` (which direction is better for a metric
    the config chooses checkpoints by) and `split_size(batch_size) -> int` (the size of the
    batch axis split over devices, `batch_size` when absent).
    """


class Hook:
  """Extends the loop without entering it; override what you need.

  Most hooks add to the records (`on_log`, `on_eval`). A hook that steers training (a
  search that stops and refills trials, population-based training) returns a new state
  from `on_start` and `after_eval`, and keeps its own bookkeeping in the checkpoint through
  `get_state`/`set_state`, so a resumed run takes the same decisions.
  """

  def on_log(self, step: int, record: Metrics) -> Metrics:
    """Extra metrics for the train record of `step` (e.g. the privacy budget spent)."""
    del step, record
    return {}

  def on_eval(self, state: Any, step: int, split: str) -> Metrics:
    """Extra metrics when `state` is evaluated on `split` ("eval" or "test")."""
    del state, step, split
    return {}

  def on_start(self, state: Any, step: int) -> Any:
    """The state to train from, given the new or restored one at `step` (logical copy)."""
    del step
    return state

  def after_eval(self, state: Any, step: int, metrics: Metrics) -> Any:
    """The state to go on with after the validation `metrics` of `step` were written.

    Called before the checkpoint of `step` is saved, so the checkpoint holds what this
    returns. The new state must keep the structure, shapes and dtypes of `state`: the
    compiled step is then reused as it is.
    """
    del step, metrics
    return state

  def get_state(self) -> Any:
    """The hook's own state, JSON-serialisable, saved in each checkpoint (None: nothing)."""
    return None

  def set_state(self, state: Any) -> None:
    """Takes back what `get_state` returned, when a run resumes from a checkpoint."""
    del state

  def before_dispatch(self, step: int, num_steps: int) -> None:
    """Called before each compiled call, which runs the `num_steps` steps from `step` (more
    than one when steps are fused), and once more with `num_steps` 0 when the loop ends,
    normally or by an exception (e.g. to stop a profile: `dl.training.profile`)."""
    del step, num_steps


def fit(
  trainable: Trainable,
  workdir: str,
  config: FitConfig | None = None,
  *,
  hooks: Sequence[Hook] = (),
  **overrides,
) -> tuple[Any, writers.History]:
  """Trains `trainable` in `workdir`, resuming from its newest readable checkpoint.

  Args:
    trainable: what to train: a `dl.Task` (`dl.task(model=..., objective=..., ...)`), a GAN
      (`dl.generative.gan_train`), federated rounds (`dl.trust.federated`), or any `Trainable`.
    workdir: where `checkpoints/`, `metrics.jsonl`, TensorBoard events and `curves.png` go.
    config: how to run (`FitConfig`); keyword arguments override its fields, e.g.
      `fit(task, "/tmp/run", num_steps=500, batch_size=64)`.
    hooks: extend the records (`Hook`), e.g. `dl.trust.privacy.BudgetHook`.

  Returns:
    The final state (members stacked on a leading axis for an ensemble) and the history
    {"train": [...], "eval": [...], "test": [...]} of metric records (empty lists where there
    is no such data). "eval" records are on
    validation data; the "test" record is scored once, at the end, on the checkpoint that
    was best on validation (its "step" says which).

  Raises:
    FloatingPointError: when a train metric or the parameters stop being finite; the last
      good checkpoint is kept.
    dl.training.preemption.Preempted: on SIGTERM or SIGINT, after saving a checkpoint at the
      step reached (a `SystemExit` with status 75: run the same call again to resume).
    dl.core.lock.WorkdirLockedError: when another live run holds `workdir`.
  """
  c = dataclasses.replace(config or FitConfig(), **overrides)
  if c.compilation_cache_dir:
    _use_compilation_cache(c.compilation_cache_dir)
  members = c.members()
  primary = distributed.is_primary()
  init = functools.partial(_init_members, trainable, members)
  abstract_state = jax.eval_shape(init)
  layout = _layout(trainable, c, abstract_state)
  split_size = getattr(trainable, "split_size", lambda b: b)(c.batch_size)
  if split_size % layout.batch_shards:
    what = f"batch_size ({c.batch_size})"
    if split_size != c.batch_size:
      what = f"the batch axis this trainable splits ({split_size})"
    raise ValueError(
      f"{what} must be divisible by the {layout.batch_shards} devices that "
      f"parallel={c.parallel!r} splits it over."
    )
  batches = _batches(trainable, c, members)
  num_steps = c.total_steps(batches.steps_per_epoch)
  selection = _selection(trainable, c)
  lock = _lock(workdir)
  try:
    peak, peak_source = flops.peak_flops_per_device(configured=c.peak_flops_per_device)
    if primary:
      record = {"name": trainable.name, "selection": selection, **dataclasses.asdict(c)}
      record["peak"] = {"flops_per_device": peak, "source": peak_source}
      _write_json(os.path.join(workdir, "fit_config.json"), record)
    ckpt = _checkpointer(workdir, c, selection)
    # Batches prepared one dispatch ahead and laid out for the step, in the background.
    position = _Position(feed.Feed(batches, layout.put_batch), hooks)
    state = _start(layout, ckpt, init, abstract_state, position, members)
    writer = (
      writers.MetricWriter(workdir, tensorboard=c.tensorboard) if primary else _NoWriter(workdir)
    )
    run = _Run(trainable, c, layout, ckpt, writer, hooks, num_steps, len(members), selection, peak)
    run.on_log = lambda step: lock.refresh()
    try:
      with preemption.StopRequests(c.checkpoint_every_seconds) as stops:
        state = run.train(state, position, stops)
      run.test(state, abstract_state)
    finally:  # `run.test` waited for the last save (raising its failure); close never raises.
      position.batches.close()
      ckpt.close()
      writer.close()
    distributed.barrier("dl.fit: metrics written")  # The others then read process 0's file.
  finally:
    lock.release()
  history = {"train": [], "eval": [], "test": []} | writers.read_history(writer.path)
  if primary:
    writers.plot_history(history, os.path.join(workdir, "curves.png"), title=trainable.name)
  return layout.get_state(state), history


def restore(
  trainable: Trainable,
  workdir: str,
  config: FitConfig | None = None,
  *,
  step: int | str | None = None,
  **overrides,
) -> Any:
  """The state `fit(trainable, workdir, config)` saved, laid out as `config.parallel` says,
  whatever layout it was saved from.

  `step`: None for the newest readable checkpoint, "best" for the one that was best on
  validation (the newest if none was chosen), or a step number.

  Raises:
    FileNotFoundError: when `workdir` holds no checkpoint.
  """
  c = dataclasses.replace(config or FitConfig(), **overrides)
  abstract_state = jax.eval_shape(functools.partial(_init_members, trainable, c.members()))
  layout = _layout(trainable, c, abstract_state)
  ckpt = _checkpointer(workdir, c, _saved_selection(workdir) or _selection(trainable, c))
  try:
    if step == "best":
      step = ckpt.best_step() if ckpt.best_step() is not None else ckpt.latest_step()
    restored = ckpt.restore(layout.restore_target(abstract_state), step)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(
      f"no checkpoint in {ckpt.directory}; train first with dl.fit (or dl.train) in {workdir!r}."
    )
  return restored[1]


def _use_compilation_cache(directory: str) -> None:
  """Points JAX's persistent compilation cache at `directory`, unless the environment
  (JAX_COMPILATION_CACHE_DIR) or an earlier run of this process chose one already."""
  current = jax.config.jax_compilation_cache_dir
  if current and current != directory:
    log.warning(
      "compilation_cache_dir %r not used: this process caches compiled programs in %r "
      "(JAX_COMPILATION_CACHE_DIR or an earlier run), and JAX keeps the first.",
      directory,
      current,
    )
    return
  jax.config.update("jax_compilation_cache_dir", directory)


def _layout(trainable: Trainable, c: FitConfig, abstract_state: Any) -> placement.Placement:
  """Where the state and batches live, as `c` says; parameters the trainable's model
  annotates (`param_axes()`, e.g. a `dl.Task`'s) follow their annotations on a mesh."""
  param_axes = getattr(trainable, "param_axes", None)
  return placement.create(
    c.parallel,
    c.mesh_shape,
    abstract_state,
    param_axes=param_axes() if param_axes and c.parallel in placement.MESH_MODES else None,
    sharding_rules=c.sharding_rules,
    logical_axis_rules=c.logical_axis_rules,
    dcn_mesh_shape=c.dcn_mesh_shape,
    max_replicated_mb=c.max_replicated_mb,
  )


def _saved_selection(workdir: str) -> tuple[str, str] | None:
  """The best-checkpoint choice that `fit` recorded in the workdir's `fit_config.json`."""
  path = os.path.join(workdir, "fit_config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f).get("selection")
  return tuple(saved) if saved else None


def _lock(workdir: str) -> WorkdirLock:
  """The workdir's lock, taken by process 0 for every process of the run (all fail together)."""
  lock = WorkdirLock(workdir)
  error = None
  if distributed.is_primary():
    try:
      lock.acquire(jax.process_count())
    except WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if failed and error is None:
      error = WorkdirLockedError(f"process 0 could not lock {lock.path}: see its error.")
  if error is not None:
    raise error
  return lock


def _checkpointer(workdir: str, c: FitConfig, selection: tuple[str, str] | None) -> Checkpointer:
  return Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=c.keep_checkpoints,
    best_metric=selection and selection[0],
    best_mode=selection[1] if selection else "max",
    async_saves=c.async_checkpoints,
  )


def _write_json(path: str, value: Any) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=1, default=str)


def _batches(trainable: Trainable, c: FitConfig, members) -> Batches:
  """The training stream: this process's share, one stream per member for ensembles."""
  streams = [
    trainable.batches(
      c.batch_size, seed=seed, shard_index=jax.process_index(), num_shards=jax.process_count()
    )
    for seed, _ in members
  ]
  return MemberBatches(streams) if len(streams) > 1 else streams[0]


def _init_members(trainable: Trainable, members) -> Any:
  """The initial state; for an ensemble, member states stacked on a leading axis."""
  states = [_with_hyperparams(trainable.init(seed), hparams) for seed, hparams in members]
  return states[0] if len(states) == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _with_hyperparams(state: Any, hparams: dict[str, Any]) -> Any:
  return optim.set_hyperparams(state, **hparams) if hparams else state


def _selection(trainable: Trainable, c: FitConfig) -> tuple[str, str] | None:
  """(metric, "min"/"max") choosing the best checkpoint: the config's, else the trainable's.

  A metric named in the config takes its direction from the config, else from the trainable
  (`mode(metric)`, e.g. its objective's), else "min" for "loss" and "max" for the rest.
  """
  if not c.best_metric:
    return trainable.selection
  if c.best_mode:
    return c.best_metric, c.best_mode
  mode = getattr(trainable, "mode", None)
  if mode is not None:
    return c.best_metric, mode(c.best_metric)
  return c.best_metric, "min" if c.best_metric == "loss" else "max"


class _Position:
  """What a checkpoint keeps beside the state: the data position and the hooks' own state."""

  def __init__(self, batches: Batches, hooks: Sequence[Hook]):
    self.batches = batches
    self.hooks = [hook for hook in hooks if hook.get_state() is not None]

  def get_state(self) -> Any:
    if not self.hooks:
      return self.batches.get_state()
    return {"batches": self.batches.get_state(), "hooks": [h.get_state() for h in self.hooks]}

  def set_state(self, saved: Any) -> None:
    if not self.hooks:
      self.batches.set_state(saved)
      return
    if not (isinstance(saved, dict) and len(saved.get("hooks", ())) == len(self.hooks)):
      raise ValueError(
        f"the checkpoint holds no state for this run's {len(self.hooks)} stateful hooks "
        f"({', '.join(type(h).__name__ for h in self.hooks)}); it was written by another kind "
        "of run. Resume it with the hooks it was trained with, or train in a new workdir."
      )
    self.batches.set_state(saved["batches"])
    for hook, hook_state in zip(self.hooks, saved["hooks"]):
      hook.set_state(hook_state)


def _start(layout, ckpt: Checkpointer, init, abstract_state, position: _Position, members) -> Any:
  """The state laid out for training: restored from `ckpt` if it has one, else new.

  A restored state takes its injected hyperparameters (`optax.inject_hyperparams`: learning
  rate, weight decay, swept values) from this run, not from the checkpoint, so a run resumed
  with a changed learning rate trains with the new one.
  """
  restored = ckpt.restore(layout.restore_target(abstract_state))
  if restored is None:
    return layout.init(init)
  _, state, saved_position = restored
  position.set_state(saved_position)
  return layout.put_state(_replace_hyperparams(state, init))


def _is_hyperparam(path) -> bool:
  return any(getattr(key, "name", None) == "hyperparams" for key in path)


def _replace_hyperparams(state: Any, init) -> Any:
  """`state` with every injected hyperparameter as a fresh `init()` sets it."""
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  if not any(map(_is_hyperparam, paths)):
    return state
  # Compiled on its own, XLA keeps the constants and drops the rest of the initialisation.
  values = jax.jit(
    lambda: [x for p, x in jax.tree_util.tree_leaves_with_path(init()) if _is_hyperparam(p)]
  )()
  fresh = iter(jax.device_get(values))  # host values, laid out with the rest by `put_state`
  return jax.tree_util.tree_map_with_path(
    lambda path, x: next(fresh) if _is_hyperparam(path) else x, state
  )


class _NoWriter:
  """The metric writer of processes other than 0, which writes for all of them."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, split: str, step: int, metrics: Metrics) -> None:
    del split, step, metrics

  def close(self) -> None:
    pass


class _Throughput:
  """The train records' model FLOPs, TFLOP/s per device, MFU and compile seconds.

  The FLOPs of a step are counted once, at the first record: the trainable's analytic
  count, else XLA's count of the one-step program (`flops.xla_flops`), lowered for a batch
  it was called with (jit's cached program, no compile) or, in a run that only fused
  steps, for the shapes of one step (one more compile).
  """

  def __init__(self, one_step, analytic: float | None, peak: float | None, fused_axis: int):
    self.one_step = one_step
    self.flops_per_step = analytic
    self.counted = analytic is not None
    self.peak = peak
    self.fused_axis = fused_axis
    self.clock = flops.CompileClock()  # runs around each dispatch
    self.batch = None  # what to lower the one-step program for, until counted
    self.devices: int | None = None  # that the state spans

  def dispatched(self, batch: Any, k: int) -> None:
    """Keeps a one-step batch (or, from fused batches, its shapes) for XLA's count."""
    if self.counted or not (k == 1 or self.batch is None):
      return
    if k == 1:
      self.batch = batch
    else:
      a = self.fused_axis
      self.batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[:a] + x.shape[a + 1 :], x.dtype), batch
      )

  def record(self, state: Any, steps: int, seconds: float) -> Metrics:
    """The figures of `steps` steps that took `seconds` (and the compiling they held)."""
    if self.devices is None:
      self.devices = flops.num_devices(state)
    if not self.counted:
      self.flops_per_step = self._xla_count(state)
      self.counted, self.batch = True, None
    out = {}
    if self.flops_per_step:
      out["model_flops_per_step"] = self.flops_per_step
      out |= flops.rates(self.flops_per_step, steps, seconds, self.devices, self.peak)
    out["compile_seconds"] = self.clock.take()
    return out

  def _xla_count(self, state: Any) -> float | None:
    try:
      return flops.xla_flops(self.one_step, state, self.batch)
    except Exception as e:  # a figure for the records never stops a run
      log.warning("no XLA FLOP count of the train step (%s); records carry no mfu.", e)
      return None


@dataclasses.dataclass
class _Run:
  """One call of `fit`: its parts, and the steps from the current one to the last."""

  trainable: Trainable
  config: FitConfig
  layout: placement.Placement
  ckpt: Checkpointer
  writer: Any
  hooks: Sequence[Hook]
  num_steps: int
  num_members: int
  selection: tuple[str, str] | None
  peak_flops: float | None = None  # of one device, for the records' mfu
  on_log: Any = lambda step: None  # e.g. refreshes the workdir's lock

  @property
  def examples_per_step(self) -> int:
    """Training examples one step consumes (a trainable may say, e.g. a federated round)."""
    count = getattr(self.trainable, "examples_per_step", None)
    return count(self.config.batch_size) if count else self.config.batch_size

  def analytic_flops(self) -> float | None:
    """Model FLOPs of one step of all members, if the trainable counts them."""
    count = getattr(self.trainable, "flops_per_step", None)
    per_member = count(self.config.batch_size) if count else None
    return None if per_member is None else per_member * self.num_members

  def train(self, state: Any, position: _Position, stops: preemption.StopRequests) -> Any:
    """Runs steps from `state.step` to `num_steps`, stopping at each event step.

    Raises:
      preemption.Preempted: after saving a checkpoint, when `stops` asks to stop.
    """
    c = self.config
    step_fn = self.trainable.step
    if self.num_members > 1:
      step_fn = jax.vmap(step_fn)  # members: own state, own batches, one program
    one_step = self.layout.compile(step_fn, fused=False)
    fused_steps = self.layout.compile(step_fn, fused=True, unroll=c.unroll_steps)
    fused_axis = 1 if self.layout.mode == "pmap" else 0  # (devices, k, ...) under pmap
    self.throughput = _Throughput(one_step, self.analytic_flops(), self.peak_flops, fused_axis)
    batches = position.batches
    events = _Events.create(c, batches.steps_per_epoch, self.num_steps)
    step = int(np.max(jax.device_get(self.layout.get_state(state).step)))
    state = self.let_hooks(state, lambda hook, logical: hook.on_start(logical, step))
    self.pending, self.pending_inputs, self.last_sync = [], [], (step, time.perf_counter())
    self.bar = tqdm.tqdm(
      total=self.num_steps,
      initial=step,
      disable=not (c.progress and distributed.is_primary()),
      unit="step",
      desc=self.trainable.name,
    )
    if step:
      _say(self.bar, f"resuming at step {step} from {self.ckpt.directory}")
    self.throughput.clock.start()
    try:
      with self.bar:
        while step < self.num_steps:
          k = events.steps_until_next(step)
          then = events.steps_until_next(step + k) if step + k < self.num_steps else None
          batch = batches.take(k, then=then)  # laid out; the next call's is prepared meanwhile
          self.pending_inputs.extend(batches.nonfinite)
          for hook in self.hooks:
            hook.before_dispatch(step, k)
          with jax.profiler.StepTraceAnnotation("train", step_num=step), self.throughput.clock:
            state, metrics = (one_step if k == 1 else fused_steps)(state, batch)
          self.throughput.dispatched(batch, k)
          self.pending.append(metrics)  # Stays on device until the next sync.
          step += k
          self.bar.update(k)
          stop = stops.requested(step)
          if events.any(step) or stop:
            state = self.at_event(state, step, position, events, stops, stop)
    finally:
      self.throughput.clock.stop()
      for hook in self.hooks:
        hook.before_dispatch(step, 0)
    return state

  def let_hooks(self, state: Any, call) -> Any:
    """`state` after each hook's `call(hook, logical_state)`, laid out again if one changed it."""
    logical = self.layout.get_state(state)
    changed = logical
    for hook in self.hooks:
      changed = call(hook, changed)
    return state if changed is logical else self.layout.put_state(changed)

  def at_event(self, state, step: int, position: _Position, events, stops, stop: bool) -> Any:
    """Logs, evaluates and checkpoints as the schedule says; stops after a checkpoint if asked.

    Returns the state to go on with (hooks may change it after an evaluation).
    """
    self.ckpt.check()  # A background save that failed stops the run here, with one clear error.
    record, seconds = _sync(
      self.pending,
      step,
      self.last_sync,
      self.examples_per_step,
      self.num_members,
      self.pending_inputs,
    )
    record |= self.throughput.record(state, step - self.last_sync[0], seconds)
    # After the first count of FLOPs, which may compile: not a part of training's time.
    self.pending, self.pending_inputs, self.last_sync = [], [], (step, time.perf_counter())
    for hook in self.hooks:
      record |= hook.on_log(step, record)
    self.writer.write("train", step, record)
    self.bar.set_postfix(_shown(record))
    self.on_log(step)
    stop = stop or stops.agreed_at_log_step()
    eval_metrics = (
      self.evaluate(self.layout.get_state(state), step, "eval") if events.is_eval(step) else None
    )
    if eval_metrics and self.selection and self.selection[0] not in eval_metrics:
      raise ValueError(
        f"best_metric {self.selection[0]!r} is not among the validation metrics "
        f"{sorted(eval_metrics)}; set best_metric to one of them."
      )
    if eval_metrics:
      _say(self.bar, f"step {step}: eval {_format(eval_metrics, self.num_members)}")
      state = self.let_hooks(
        state, lambda hook, logical: hook.after_eval(logical, step, eval_metrics)
      )
    if events.is_checkpoint(step) or stops.checkpoint_due() or stop:
      logical = self.layout.get_state(state)
      _check_finite(logical, step, self.ckpt)
      self.ckpt.save(step, logical, position.get_state(), _mean(eval_metrics))
      stops.checkpointed()
    if stop:
      self.ckpt.wait()
      preempted = preemption.Preempted(step, self.ckpt.directory, stops.signal_name)
      if distributed.is_primary():
        self.bar.write(f"dl: {preempted}", file=sys.stderr)
      raise preempted
    return state

  def evaluate(self, state: Any, step: int, split: str) -> Metrics | None:
    """The trainable's metrics on `split` and the hooks', written as a `split` record."""
    metrics = self.trainable.evaluate(state, split, self.config.eval_batch_size)
    if metrics is None:
      return None
    for hook in self.hooks:
      metrics |= hook.on_eval(state, step, split)
    if metrics:
      self.writer.write(split, step, metrics)
    return metrics

  def test(self, state: Any, abstract_state: Any) -> None:
    """Scores the test data once, with the checkpoint that was best on validation."""
    self.ckpt.wait()
    logical = self.layout.get_state(state)
    final = int(np.max(jax.device_get(logical.step)))
    best = self.ckpt.best_step() if self.selection else None
    if best is not None and best != final:  # restored as one logical copy, in any layout
      _, logical, _ = self.ckpt.restore(self.layout.restore_target(abstract_state), best)
    metrics = self.evaluate(logical, best or final, "test")
    if metrics and distributed.is_primary() and self.config.progress:
      where = f"the best validation checkpoint, step {best}" if best else f"step {final}"
      print(f"test (scored once, on {where}): {_format(metrics, self.num_members)}")


@dataclasses.dataclass(frozen=True)
class _Events:
  """The steps at which the loop logs, evaluates and checkpoints (always at the last step)."""

  log_every: int
  eval_every: int
  ckpt_every: int
  steps_per_dispatch: int
  num_steps: int

  @classmethod
  def create(cls, c: FitConfig, steps_per_epoch: int, num_steps: int) -> "_Events":
    eval_every = c.eval_every or steps_per_epoch
    return cls(
      c.log_every, eval_every, c.checkpoint_every or eval_every, c.steps_per_dispatch, num_steps
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
  if distributed.is_primary() and not bar.disable:
    bar.write(message)


def _sync(
  pending,
  step: int,
  last_sync: tuple[int, float],
  examples_per_step: int,
  num_members: int,
  inputs: Sequence[dict[str, int]] = (),
) -> tuple[Metrics, float]:
  """Fetches the per-step metrics since the last sync, checks they are finite, averages them.

  Returns the record and the seconds since the last sync. `inputs` holds, per step since the
  last sync, the non-finite values of its batch (`feed.nonfinite_counts`): a metric that is
  not finite is blamed on the data or on the optimisation accordingly.

  Each entry of `pending` holds, per metric, a scalar (one step) or (k,) (k fused steps),
  with a trailing member axis for ensembles, whose records hold one value per member.
  """
  fetched = parallel.fetch(pending)  # Also when the metrics span several processes.
  per_step = {
    name: np.concatenate([np.reshape(m[name], (-1, num_members)) for m in fetched])
    for name in fetched[0]
  }
  for name, values in per_step.items():
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
      first_bad_step, member = np.argwhere(~np.isfinite(values))[0]
      which = f" (ensemble member {member})" if num_members > 1 else ""
      held = inputs[first_bad_step] if len(inputs) == len(values) else None
      if held:
        cause = (
          "That step's batch held non-finite inputs ("
          + ", ".join(f"{count} in {key!r}" for key, count in held.items())
          + "): the data is at fault, not the optimisation. Clean it (dl.task checks the arrays "
          "it is given; a data part of your own is used as it is)."
        )
      elif held is not None:
        cause = (
          "The inputs of that step's batch were finite, so training diverged: try a lower "
          "learning rate or clip gradients (optax.clip_by_global_norm; config.grad_clip_norm)."
        )
      else:
        cause = "Try a lower learning rate or clip gradients (optax.clip_by_global_norm)."
      raise FloatingPointError(
        f"the training metric {name!r} became {values[first_bad_step, member]} at step "
        f"{step - len(values) + first_bad_step + 1}{which}. Training stopped; the last good "
        f"checkpoint is kept. {cause}"
      )
  record = {name: inference.per_member(values.mean(axis=0)) for name, values in per_step.items()}
  prev_step, prev_time = last_sync
  examples = (step - prev_step) * examples_per_step * num_members
  seconds = time.perf_counter() - prev_time
  record["examples_per_sec"] = examples / seconds
  return record, seconds


def _shown(record: Metrics) -> dict[str, str]:
  """The first two metrics of a record, formatted (means over ensemble members)."""
  means = _mean({k: v for k, v in record.items() if k not in writers.RUN_FIGURES})
  return {name: f"{value:.4f}" for name, value in list(means.items())[:2]}


def _format(metrics: Metrics, num_members: int) -> str:
  shown = " ".join(f"{k} {v}" for k, v in _shown(metrics).items())
  return shown + (" (mean of members)" if num_members > 1 else "")


def _mean(metrics: Metrics | None) -> dict[str, float] | None:
  """Records averaged over ensemble members (for best-checkpoint choice and the progress bar)."""
  return metrics and {k: float(np.mean(v)) for k, v in metrics.items() if _is_number(v)}


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) or (
    isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
  )


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _check_finite(state: Any, step: int, ckpt: Checkpointer) -> None:
  if not bool(parallel.fetch(_all_finite(state))):
    raise FloatingPointError(
      f"the state (parameters or optimizer state) is not finite at step {step}; not saving it. "
      f"The last good checkpoint (step {ckpt.latest_step()}) is kept. Try a lower learning "
      "rate or clip gradients."
    )
