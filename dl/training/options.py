"""How `dl.fit` runs: `FitConfig`, the loop's options, each default written once.

`dl.TrainConfig` holds one as its `fit` field, so a config run and a parts run read the
same options.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from dl import inference
from dl.training import placement


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
  eval_batch_size: int = inference.EVAL_BATCH_SIZE
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
      require(getattr(self, key) > 0, key, "an integer > 0", getattr(self, key))
    for key in ("num_steps", "eval_every", "checkpoint_every"):
      require(getattr(self, key) >= 0, key, "an integer >= 0", getattr(self, key))
    require(self.keep_checkpoints > 0, "keep_checkpoints", "an integer > 0", self.keep_checkpoints)
    require(
      self.peak_flops_per_device >= 0,
      "peak_flops_per_device",
      "a number >= 0 (0: from the device kind)",
      self.peak_flops_per_device,
    )
    require(
      self.checkpoint_every_seconds >= 0,
      "checkpoint_every_seconds",
      "a number >= 0",
      self.checkpoint_every_seconds,
    )
    require(
      self.num_steps > 0 or self.num_epochs > 0,
      "num_epochs",
      "> 0 (or num_steps > 0)",
      self.num_epochs,
    )
    require(self.ensemble_size > 0, "ensemble_size", "an integer > 0", self.ensemble_size)
    require(
      self.parallel in placement.MODES, "parallel", f"one of {placement.MODES}", self.parallel
    )
    require(self.best_mode in ("", "min", "max"), "best_mode", "'min', 'max' or ''", self.best_mode)
    sizes = {len(v) for v in self.sweep.values()} | ({self.ensemble_size} - {1})
    require(
      len(sizes) <= 1,
      "sweep",
      "one value per member (all of equal length, and equal to ensemble_size when that is > 1)",
      (self.ensemble_size, dict(self.sweep)),
    )
    require(
      all(isinstance(v, (int, float)) and v >= 0 for vs in self.sweep.values() for v in vs),
      "sweep",
      "{hyperparameter: a tuple of numbers >= 0}",
      dict(self.sweep),
    )
    require(
      not sizes or self.parallel == "jit",
      "parallel",
      "'jit' for ensembles and sweeps (they run as one vmapped program)",
      self.parallel,
    )

  def total_steps(self, steps_per_epoch: int) -> int:
    """`num_steps`, else `num_epochs` passes of `steps_per_epoch` steps (rounded up)."""
    return self.num_steps or math.ceil(self.num_epochs * steps_per_epoch)

  def members(self) -> list[tuple[int, dict[str, float]]]:
    """(seed, hyperparameters) of every member: one entry unless ensembling or sweeping."""
    n = max([self.ensemble_size, *(len(v) for v in self.sweep.values())])
    seeds = [self.seed + i if self.ensemble_size > 1 else self.seed for i in range(n)]
    return [(seeds[i], {k: float(v[i]) for k, v in self.sweep.items()}) for i in range(n)]


def require(ok: bool, key: str, expected: str, got: Any) -> None:
  """Raises a ValueError naming `key`, what it must be and what it got, unless `ok`."""
  if not ok:
    raise ValueError(f"{key} must be {expected}; got {got!r}.")
