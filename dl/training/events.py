"""What the loop does at its event steps, and when they fall.

`Events` is the schedule of log, eval and checkpoint steps (and how many steps to fuse
between them). At a log step, `sync` fetches the metrics since the last one, checks they are
finite and averages them into a train record; `Throughput` adds its model FLOPs, TFLOP/s per
device, MFU and compile seconds; `shown` and `format_metrics` are what the progress bar and
the log lines print. Before a checkpoint, `check_finite` checks the state.
"""

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from dl import inference
from dl.core import distributed, parallel, writers
from dl.core.checkpoint import Checkpointer
from dl.training import flops
from dl.training.protocols import Metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Events:
  """The steps at which the loop logs, evaluates and checkpoints (always at the last step).

  Attributes:
    log_every: steps between train records.
    eval_every: steps between evaluations.
    ckpt_every: steps between checkpoints.
    steps_per_dispatch: the most steps fused into one compiled call.
    num_steps: the last step.
  """

  log_every: int
  eval_every: int
  ckpt_every: int
  steps_per_dispatch: int
  num_steps: int

  def steps_until_next(self, step: int) -> int:
    """How many steps to fuse: up to `steps_per_dispatch`, never past an event."""
    intervals = (self.log_every, self.eval_every, self.ckpt_every)
    return min(
      self.steps_per_dispatch, self.num_steps - step, *(every - step % every for every in intervals)
    )

  def is_eval(self, step: int) -> bool:
    """Whether `step` is evaluated on validation data."""
    return step == self.num_steps or step % self.eval_every == 0

  def is_checkpoint(self, step: int) -> bool:
    """Whether a checkpoint is saved at `step`."""
    return step == self.num_steps or step % self.ckpt_every == 0

  def any(self, step: int) -> bool:
    """Whether `step` logs, evaluates or checkpoints."""
    return self.is_eval(step) or self.is_checkpoint(step) or step % self.log_every == 0


def say(bar: tqdm.tqdm, message: str) -> None:
  """Prints a line above the progress bar, once per run (on process 0)."""
  if distributed.is_primary() and not bar.disable:
    bar.write(message)


def sync(
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


def shown(record: Metrics) -> dict[str, str]:
  """The first two metrics of a record, formatted (means over ensemble members)."""
  means = mean_over_members({k: v for k, v in record.items() if k not in writers.RUN_FIGURES})
  return {name: f"{value:.4f}" for name, value in list(means.items())[:2]}


def format_metrics(metrics: Metrics, num_members: int) -> str:
  """The first two metrics as one line of a log, e.g. "loss 0.1234 accuracy 0.9500"."""
  line = " ".join(f"{k} {v}" for k, v in shown(metrics).items())
  return line + (" (mean of members)" if num_members > 1 else "")


def mean_over_members(metrics: Metrics | None) -> dict[str, float] | None:
  """Records averaged over ensemble members (for best-checkpoint choice and the progress bar)."""
  return metrics and {k: float(np.mean(v)) for k, v in metrics.items() if _is_number(v)}


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) or (
    isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
  )


@jax.jit
def _all_finite(tree) -> jax.Array:
  """Whether every inexact leaf of `tree` is finite, as one boolean on device."""
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def check_finite(state: Any, step: int, ckpt: Checkpointer) -> None:
  """Raises FloatingPointError when a leaf of `state` is not finite (before saving it)."""
  if not bool(parallel.fetch(_all_finite(state))):
    raise FloatingPointError(
      f"the state (parameters or optimizer state) is not finite at step {step}; not saving it. "
      f"The last good checkpoint (step {ckpt.latest_step()}) is kept. Try a lower learning "
      "rate or clip gradients."
    )


class Throughput:
  """The train records' model FLOPs, TFLOP/s per device, MFU and compile seconds.

  The FLOPs of a step are counted once, at the first record: the trainable's analytic
  count, else XLA's count of the lowered one-step program (`flops.xla_flops`), for a batch
  it was called with or, in a run that only fused steps, for the shapes of one step
  (lowered, not compiled).
  """

  def __init__(self, one_step, analytic: float | None, peak: float | None, pmap: bool):
    self.one_step = one_step
    self.flops_per_step = analytic
    self.counted = analytic is not None
    self.peak = peak
    self.pmap = pmap  # one_step is one device's program; fused batches are (devices, k, ...)
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
      a = 1 if self.pmap else 0  # the k axis
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
      return flops.xla_flops(self.one_step, state, self.batch, per_device=self.pmap)
    except Exception as e:  # a figure for the records never stops a run
      log.warning("no XLA FLOP count of the train step (%s); records carry no mfu.", e)
      return None
