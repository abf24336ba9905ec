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
import math
import os
from collections.abc import Mapping, Sequence
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


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """How `fit` runs: length, batches, schedule of events, members, compile mode.

  Attributes:
    num_steps: train steps in all (0: `num_epochs` passes over the training data).
    num_epochs: used when `num_steps` is 0.
    batch_size: training examples per step (per member).
    eval_batch_size: examples per evaluation call (the last batch is padded and masked).
    seed: seeds the init, dropout and data order of member 0.
    ensemble_size: members trained at once, one `jax.vmap`ped program; member i uses seed
      `seed + i` (its own init, dropout and data order).
    sweep: {injected hyperparameter: one value per member}, e.g. {"learning_rate": (1e-3,
      3e-3)}; members share `seed` unless `ensemble_size` > 1. The optimizer must carry the
      hyperparameter (`optax.inject_hyperparams`). Members share their checkpoints, so the
      best one is chosen by the mean over members of the validation metric: to choose a
      hyperparameter, read each member's column of the "eval" records.
    steps_per_dispatch: train steps fused into one compiled call (`lax.scan`).
    unroll_steps: write those fused steps out as straight-line code instead of a loop
      (longer compile; much faster for convolutional models on CPU, see
      `dl.training.compile.scan_steps`).
    log_every: steps between train records.
    eval_every: steps between evaluations (0: once per epoch).
    checkpoint_every: steps between checkpoints (0: at each evaluation).
    checkpoint_every_seconds: also checkpoint when this much wall time has passed since the
      last checkpoint (checked at log steps; 0: never). SIGTERM and SIGINT always save one
      (`dl.training.preemption`).
    async_checkpoints: write checkpoints in the background while training goes on (a
      failed write stops the run at the next log step); False: each save blocks until the
      checkpoint is on disk.
    keep_checkpoints: the latest checkpoints kept (the best one is kept too).
    best_metric: eval metric that picks the best checkpoint ("": the trainable's choice).
    best_mode: "min" or "max" of `best_metric` ("": the trainable's choice, else "max").
    parallel: "jit", "pmap", "data", "fsdp" or "mesh" (`dl.training.placement.MODES`).
    mesh_shape: the mesh over the axes data, fsdp and model (tensor parallel), e.g.
      "data=2,fsdp=2,model=2" (-1: the remaining devices); overrides the "data"/"fsdp" presets.
    dcn_mesh_shape: the part of each mesh axis that spans slices or hosts, e.g. "data=2"
      (a hybrid mesh: the rest of each axis stays within a slice or process).
    sharding_rules: (regex on a state leaf's path, axis names per dimension) pairs, first
      match wins, for leaves the model does not annotate, e.g.
      `((r"Dense_0/kernel$", ("embed", "mlp")),)`; names are logical names or mesh axes.
    logical_axis_rules: (logical name, mesh axes) pairs that take precedence over
      `dl.core.parallel.LOGICAL_RULES`, e.g. `(("embed", None),)` to keep the width whole.
    max_replicated_mb: a parameter (or optimizer leaf) larger than this many MiB may not be
      replicated on a mesh whose fsdp or model axis could shard it: `fit` stops before
      compiling, naming it.
    peak_flops_per_device: the peak FLOP/s of one device, for the records' mfu (0: from
      `dl.training.flops.PEAKS` by device kind; on CPU, a matmul measured once per process).
    compilation_cache_dir: a directory for JAX's persistent compilation cache, so a rerun
      loads its compiled programs instead of compiling them ("": JAX's setting, e.g. the
      JAX_COMPILATION_CACHE_DIR environment variable, which wins when set). JAX keeps the
      first directory a process used, and only programs slower to compile than
      `jax_persistent_cache_min_compile_time_secs` (1 s by default).
    progress: show a progress bar.
    tensorboard: also write TensorBoard event files.
  """

  num_steps: int = 0
  num_epochs: float = 10.0
  batch_size: int = 128
  eval_batch_size: int = 1000
  seed: int = 0
  ensemble_size: int = 1
  sweep: Mapping[str, Sequence[float]] = dataclasses.field(default_factory=dict)
  steps_per_dispatch: int = 1
  unroll_steps: bool = False
  log_every: int = 50
  eval_every: int = 0
  checkpoint_every: int = 0
  checkpoint_every_seconds: float = 0.0
  async_checkpoints: bool = True
  keep_checkpoints: int = 3
  best_metric: str = ""
  best_mode: str = ""
  parallel: str = "jit"
  mesh_shape: str = ""
  dcn_mesh_shape: str = ""
  sharding_rules: Sequence[tuple[str, Sequence[Any]]] = ()
  logical_axis_rules: Sequence[tuple[str, Any]] = ()
  max_replicated_mb: float = 64.0
  peak_flops_per_device: float = 0.0
  compilation_cache_dir: str = ""
  progress: bool = True
  tensorboard: bool = True

  def __post_init__(self):
    for key in ("batch_size", "eval_batch_size", "steps_per_dispatch", "log_every"):
      _require(getattr(self, key) > 0, key, "an integer > 0", getattr(self, key))
    for key in ("num_steps", "eval_every", "checkpoint_every"):
      _require(getattr(self, key) >= 0, key, "an integer >= 0", getattr(self, key))
    _require(self.keep_checkpoints > 0, "keep_checkpoints", "an integer > 0", self.keep_checkpoints)
    _require(
      self.peak_flops_per_device >= 0,
      "peak_flops_per_device",
      "a number >= 0 (0: from the device kind)",
      self.peak_flops_per_device,
    )
    _require(
      self.checkpoint_every_seconds >= 0,
      "checkpoint_every_seconds",
      "a number >= 0",
      self.checkpoint_every_seconds,
    )
    _require(
      self.num_steps > 0 or self.num_epochs > 0,
      "num_epochs",
      "> 0 (or num_steps > 0)",
      self.num_epochs,
    )
    _require(self.ensemble_size > 0, "ensemble_size", "an integer > 0", self.ensemble_size)
    _require(
      self.parallel in placement.MODES, "parallel", f"one of {placement.MODES}", self.parallel
    )
    _require(
      self.best_mode in ("", "min", "max"), "best_mode", "'min', 'max' or ''", self.best_mode
    )
    sizes = {len(v) for v in self.sweep.values()} | ({self.ensemble_size} - {1})
    _require(
      len(sizes) <= 1,
      "sweep",
      "one value per member (all of equal length, and equal to ensemble_size when that is > 1)",
      (self.ensemble_size, dict(self.sweep)),
    )
    if sizes and self.parallel != "jit":
      raise ValueError(
        f"ensembles and sweeps run as one vmapped program with parallel='jit'; got "
        f"{self.parallel!r}."
      )

  def members(self) -> list[tuple[int, dict[str, float]]]:
    """(seed, hyperparameters) of every member: one entry unless ensembling or sweeping."""
    n = max([self.ensemble_size, *(len(v) for v in self.sweep.values())])
    seeds = [self.seed + i if self.ensemble_size > 1 else self.seed for i in range(n)]
    return [(seeds[i], {k: float(v[i]) for k, v in self.sweep.items()}) for i in range(n)]


def _require(ok: bool, key: str, expected: str, got: Any) -> None:
  if not ok:
    raise ValueError(f"{key} must be {expected}; got {got!r}.")


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
  num_steps = c.num_steps or math.ceil(c.num_epochs * batches.steps_per_epoch)
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
