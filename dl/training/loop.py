"""The one training loop: `fit(trainable, workdir, config)`.

Everything impure lives here, once: starting or resuming from the newest readable
checkpoint, the schedule of log, eval and checkpoint steps, fusing steps between them, the
finiteness checks, the lifetime of the checkpointer and the metric writer, the progress bar,
the test score at the end and the plot. What is trained is a part passed in (`Trainable`):
a supervised `dl.Task`, a GAN, a federated round, a user's own step. Features that need the
loop (a privacy budget in the logs, slice metrics at evaluation) come in as `Hook`s.

`fit` makes the parts of a run and hands them to `dl.training.run.Run`, which steps between
the events that `dl.training.events` schedules and records; `dl.training.resume` starts
from a checkpoint; `dl.training.protocols` says what a trainable must and may provide.

Each train record carries, beside the metrics, `examples_per_sec`, `model_flops_per_step`,
`tflops_per_sec_per_device`, `mfu` and `compile_seconds` (`dl.training.flops`), each over
the steps since the previous record: the first record's interval holds the compilation
that its `compile_seconds` reports. Each dispatch is a `jax.profiler.StepTraceAnnotation`
named "train" (`dl.training.profile.ProfileHook` records a trace of some steps).
"""

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from dl.core import distributed, writers
from dl.core.checkpoint import Checkpointer
from dl.core.lock import WorkdirLock, WorkdirLockedError
from dl.data.batches import MemberBatches
from dl.training import compile as compile_lib
from dl.training import events, feed, flops, optim, placement, preemption, resume
from dl.training.options import FitConfig
from dl.training.protocols import (
  Batches,
  Hook,
  Metrics,
  Trainable,
  TrainableDefaults,
  check_members,
  optional,
)
from dl.training.run import Run


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
  check_members(trainable)
  if c.compilation_cache_dir:
    compile_lib.use_compilation_cache(c.compilation_cache_dir)
  members = c.members()
  primary = distributed.is_primary()
  init = functools.partial(_init_members, trainable, members)
  abstract_state = jax.eval_shape(init)
  layout = _layout(trainable, c, abstract_state)
  split_size = optional(trainable, TrainableDefaults.split_size)(c.batch_size)
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
    position = resume.Position(feed.Feed(batches, layout.put_batch), hooks)
    state = resume.start(layout, ckpt, init, abstract_state, position)
    writer = (
      writers.MetricWriter(workdir, tensorboard=c.tensorboard) if primary else _NoWriter(workdir)
    )
    run = Run(
      trainable,
      layout,
      ckpt,
      writer,
      hooks,
      _events(c, batches.steps_per_epoch, num_steps),
      len(members),
      selection,
      c.batch_size,
      c.eval_batch_size,
      unroll_steps=c.unroll_steps,
      progress=c.progress,
      peak_flops=peak,
      on_log=lambda step: lock.refresh(),
    )
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


def _layout(trainable: Trainable, c: FitConfig, abstract_state: Any) -> placement.Placement:
  """Where the state and batches live, as `c` says; parameters the trainable's model
  annotates (`param_axes()`, e.g. a `dl.Task`'s) follow their annotations on a mesh."""
  on_mesh = c.parallel in placement.MESH_MODES
  return placement.create(
    c.parallel,
    c.mesh_shape,
    abstract_state,
    param_axes=optional(trainable, TrainableDefaults.param_axes)() if on_mesh else None,
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
  (`mode(metric)`, e.g. its objective's; `TrainableDefaults.mode` where it has none).
  """
  if not c.best_metric:
    return trainable.selection
  if c.best_mode:
    return c.best_metric, c.best_mode
  return c.best_metric, optional(trainable, TrainableDefaults.mode)(c.best_metric)


def _events(c: FitConfig, steps_per_epoch: int, num_steps: int) -> events.Events:
  """The schedule `c` asks for: evaluations once per epoch and checkpoints at each
  evaluation unless it says otherwise."""
  eval_every = c.eval_every or steps_per_epoch
  return events.Events(
    c.log_every, eval_every, c.checkpoint_every or eval_every, c.steps_per_dispatch, num_steps
  )


class _NoWriter:
  """The metric writer of processes other than 0, which writes for all of them."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, split: str, step: int, metrics: Metrics) -> None:
    del split, step, metrics

  def close(self) -> None:
    pass
