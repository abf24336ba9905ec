"""One call of `fit` once its parts are made: the steps between events, and each event.

`Run.train` dispatches the compiled step (fused between events) until the last step; at each
event step `Run.at_event` writes the train record, evaluates, lets the hooks change the
state, checkpoints, and stops when asked to. `Run.test` scores the best checkpoint once.
"""

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from dl.core import distributed
from dl.core.checkpoint import Checkpointer
from dl.training import events, placement, preemption, resume
from dl.training.protocols import Hook, Metrics, Trainable, TrainableDefaults, optional


@dataclasses.dataclass
class Run:
  """One call of `fit`: its parts, and the steps from the current one to the last.

  Attributes:
    trainable: what is trained.
    layout: where the state and the batches live, and how the step is compiled.
    ckpt: saves the state at checkpoint steps, and finds the best one for the test.
    writer: writes the records (`dl.core.writers.MetricWriter`; on other processes, none).
    hooks: extend the records and may change the state (`Hook`).
    schedule: the log, eval and checkpoint steps; its `num_steps` is the last.
    num_members: members trained at once (ensembles and sweeps; 1 otherwise).
    selection: (eval metric, "min" or "max") that picks the best checkpoint, or None.
    batch_size: training examples per step (per member).
    eval_batch_size: examples per evaluation call.
    unroll_steps: write fused steps out as straight-line code (`FitConfig.unroll_steps`).
    progress: show a progress bar.
    peak_flops: the peak FLOP/s of one device, for the records' mfu (None: no mfu).
    on_log: called with the step at each log step (e.g. refreshes the workdir's lock).
  """

  trainable: Trainable
  layout: placement.Placement
  ckpt: Checkpointer
  writer: Any
  hooks: Sequence[Hook]
  schedule: events.Events
  num_members: int
  selection: tuple[str, str] | None
  batch_size: int
  eval_batch_size: int
  unroll_steps: bool = False
  progress: bool = True
  peak_flops: float | None = None
  on_log: Callable[[int], None] = lambda step: None

  @property
  def num_steps(self) -> int:
    """The last step."""
    return self.schedule.num_steps

  @property
  def examples_per_step(self) -> int:
    """Training examples one step consumes (a trainable may say, e.g. a federated round)."""
    return optional(self.trainable, TrainableDefaults.examples_per_step)(self.batch_size)

  def analytic_flops(self) -> float | None:
    """Model FLOPs of one step of all members, if the trainable counts them."""
    per_member = optional(self.trainable, TrainableDefaults.flops_per_step)(self.batch_size)
    return None if per_member is None else per_member * self.num_members

  def train(self, state: Any, position: resume.Position, stops: preemption.StopRequests) -> Any:
    """Runs steps from `state.step` to `num_steps`, stopping at each event step.

    Raises:
      preemption.Preempted: after saving a checkpoint, when `stops` asks to stop.
    """
    step_fn = self.trainable.step
    if self.num_members > 1:
      step_fn = jax.vmap(step_fn)  # members: own state, own batches, one program
    one_step = self.layout.compile(step_fn, fused=False)
    fused_steps = self.layout.compile(step_fn, fused=True, unroll=self.unroll_steps)
    self.throughput = events.Throughput(
      one_step, self.analytic_flops(), self.peak_flops, pmap=self.layout.mode == "pmap"
    )
    batches, schedule = position.batches, self.schedule
    step = int(np.max(jax.device_get(self.layout.get_state(state).step)))
    state = self.let_hooks(state, lambda hook, logical: hook.on_start(logical, step))
    self.pending, self.pending_inputs, self.last_sync = [], [], (step, time.perf_counter())
    self.bar = tqdm.tqdm(
      total=self.num_steps,
      initial=step,
      disable=not (self.progress and distributed.is_primary()),
      unit="step",
      desc=self.trainable.name,
    )
    if step:
      events.say(self.bar, f"resuming at step {step} from {self.ckpt.directory}")
    self.throughput.clock.start()
    try:
      with self.bar:
        while step < self.num_steps:
          k = schedule.steps_until_next(step)
          then = schedule.steps_until_next(step + k) if step + k < self.num_steps else None
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
          if schedule.any(step) or stop:
            state = self.at_event(state, step, position, stops, stop)
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

  def at_event(
    self, state, step: int, position: resume.Position, stops: preemption.StopRequests, stop: bool
  ) -> Any:
    """Logs, evaluates and checkpoints as the schedule says; stops after a checkpoint if asked.

    Returns the state to go on with (hooks may change it after an evaluation).
    """
    self.ckpt.check()  # A background save that failed stops the run here, with one clear error.
    record, seconds = events.sync(
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
    self.bar.set_postfix(events.shown(record))
    self.on_log(step)
    stop = stop or stops.agreed_at_log_step()
    eval_metrics = (
      self.evaluate(self.layout.get_state(state), step, "eval")
      if self.schedule.is_eval(step)
      else None
    )
    if eval_metrics and self.selection and self.selection[0] not in eval_metrics:
      raise ValueError(
        f"best_metric {self.selection[0]!r} is not among the validation metrics "
        f"{sorted(eval_metrics)}; set best_metric to one of them."
      )
    if eval_metrics:
      events.say(
        self.bar, f"step {step}: eval {events.format_metrics(eval_metrics, self.num_members)}"
      )
      state = self.let_hooks(
        state, lambda hook, logical: hook.after_eval(logical, step, eval_metrics)
      )
    if self.schedule.is_checkpoint(step) or stops.checkpoint_due() or stop:
      logical = self.layout.get_state(state)
      events.check_finite(logical, step, self.ckpt)
      self.ckpt.save(step, logical, position.get_state(), events.mean_over_members(eval_metrics))
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
    metrics = self.trainable.evaluate(state, split, self.eval_batch_size)
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
    if metrics and distributed.is_primary() and self.progress:
      where = f"the best validation checkpoint, step {best}" if best else f"step {final}"
      print(f"test (scored once, on {where}): {events.format_metrics(metrics, self.num_members)}")
