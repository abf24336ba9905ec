"""A `jax.profiler` trace of some training steps, as a hook of the one loop.

  hook = dl.ProfileHook(start_step=10, num_steps=5, logdir=f"{workdir}/profile")
  dl.fit(task, workdir, hooks=[hook])
  # tensorboard --logdir {workdir}   (profile plugin: tensorboard-plugin-profile / xprof)

The loop wraps each dispatch in `jax.profiler.StepTraceAnnotation("train", step_num=step)`,
so the trace shows one "train" span per compiled call, with its first step as `step_num`
(on the host's thread: the call returns once the work is queued, and the device's work for
it follows on the device's own lines, or XLA's threads on CPU). The trace
lands in `<logdir>/plugins/profile/<date>/`, as `<host>.xplane.pb` (what TensorBoard's
profile plugin and XProf read) and `<host>.trace.json.gz` (Perfetto, chrome://tracing).
`jax.profiler.start_trace` needs neither TensorFlow nor the plugin installed.

`dl.train` makes this hook from `config.profile_steps` ("10:5"), into `<workdir>/profile`.
"""

import jax

from dl.training.protocols import Hook


def parse_steps(text: str) -> tuple[int, int]:
  """ "START:NUM" (e.g. "10:5") as (start step, number of steps); ValueError otherwise."""
  start, sep, num = text.partition(":")
  if not (sep and start.strip().isdigit() and num.strip().isdigit() and int(num) > 0):
    raise ValueError(
      f"profile steps must be 'START:NUM' (first step, number of steps > 0), e.g. '10:5'; "
      f"got {text!r}."
    )
  return int(start), int(num)


class ProfileHook(Hook):
  """Records a `jax.profiler` trace of the steps `start_step` to `start_step + num_steps - 1`.

  The trace starts before the dispatch that runs `start_step` and stops before the first
  dispatch past the last step asked for (after waiting for the device to finish the work
  already dispatched), or when the loop ends, also by an exception. With fused steps
  (`steps_per_dispatch` > 1) it covers whole dispatches. A run resumed past `start_step`
  records nothing; JAX allows one trace at a time per process.

  Args:
    start_step: the first step traced (steps count from 0: the state's step before it).
    num_steps: how many steps to trace (> 0).
    logdir: where the trace goes, e.g. `<workdir>/profile` (TensorBoard pointed at the
      workdir then finds it).
  """

  def __init__(self, start_step: int, num_steps: int, logdir: str):
    if start_step < 0 or num_steps <= 0:
      raise ValueError(
        f"ProfileHook needs start_step >= 0 and num_steps > 0; got {start_step}, {num_steps}."
      )
    self.start_step, self.num_steps, self.logdir = start_step, num_steps, logdir
    self.tracing = False
    self.done = False

  def before_dispatch(self, step: int, num_steps: int) -> None:
    end = self.start_step + self.num_steps
    runs_a_step_asked_for = num_steps > 0 and step < end and step + num_steps > self.start_step
    if self.tracing and (num_steps == 0 or step >= end):
      self._stop()
    elif runs_a_step_asked_for and not (self.tracing or self.done):
      jax.profiler.start_trace(self.logdir)
      self.tracing = True

  def _stop(self) -> None:
    try:  # Dispatch is asynchronous: the last traced steps may still be running.
      jax.block_until_ready(jax.live_arrays())
    finally:
      jax.profiler.stop_trace()
      self.tracing, self.done = False, True
