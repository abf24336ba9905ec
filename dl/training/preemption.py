"""Stopping a run well: termination signals and a wall-clock checkpoint timer.

A preemptible VM or a cluster scheduler sends SIGTERM some seconds before it takes the
machine; a user presses Ctrl-C (SIGINT). While `dl.fit` runs, either one makes the loop finish
the step in flight, save a checkpoint at that step, wait for the write and raise `Preempted`
(a `SystemExit` with status `EXIT_CODE`, so an uncaught one ends the process with it). The
next start resumes from that checkpoint exactly. A second SIGINT stops at once (the last
checkpoint is kept).

Several processes must stop at the same step. With `jax.distributed` initialised by
`dl.core.distributed` (JAX's preemption service on), a SIGTERM to any process reaches them all and
`multihost_utils.reached_preemption_sync_point` names the same step everywhere; SIGINT is
turned into a SIGTERM of the process to join that path. Without the service, the processes
agree at the next log step.

`checkpoint_every_seconds` saves a checkpoint when that much wall time has passed since the
last one (checked at log steps; process 0's clock decides for all).
"""

import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; run the command again.
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
  """Training stopped for a signal after saving a checkpoint at `step`; exit status 75.

  Attributes:
    step: the step of the checkpoint that holds the run.
    directory: where that checkpoint is.
  """

  def __init__(self, step: int, directory: str, signal_name: str):
    super().__init__(EXIT_CODE)
    self.step, self.directory, self.signal_name = step, directory, signal_name

  def __str__(self) -> str:
    return (
      f"stopped by {self.signal_name} at step {self.step}; its checkpoint is in "
      f"{self.directory}. Run the same command again to resume from it (exit status "
      f"{EXIT_CODE})."
    )


class StopRequests:
  """Catches termination signals while a run trains (a context manager) and says when to stop.

  Args:
    checkpoint_every_seconds: wall time between timed checkpoints (0: none).
  """

  def __init__(self, checkpoint_every_seconds: float = 0.0):
    self.checkpoint_every_seconds = checkpoint_every_seconds
    self.signal_name = ""
    self._previous: dict[int, Any] = {}
    self._last_checkpoint = time.monotonic()
    self._service = jax.process_count() > 1 and jax.config.jax_enable_preemption_service

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is threading.main_thread():  # Only it may set handlers.
      for signum in _SIGNALS:
        if signum == signal.SIGTERM and self._service:
          continue  # JAX's preemption notifier handles SIGTERM: leave its handler in place.
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc: Any) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.signal_name and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: stop now.
    self.signal_name = signal.Signals(signum).name
    print(
      f"dl: {self.signal_name} received; saving a checkpoint after the current step "
      "(send SIGINT again to stop at once).",
      file=sys.stderr,
      flush=True,
    )
    if self._service:  # Reach the other processes through JAX's preemption notifier.
      signal.raise_signal(signal.SIGTERM)

  def requested(self, step: int) -> bool:
    """Whether to stop after `step`; every process gets the same answer at the same step.

    Call it after every dispatch, with the same steps on every process.
    """
    if self._service:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return bool(self.signal_name) and jax.process_count() == 1

  def agreed_at_log_step(self) -> bool:
    """Without JAX's preemption service, processes agree at log steps: any signal stops all."""
    if jax.process_count() == 1 or self._service:
      return False
    flags = multihost_utils.process_allgather(np.int32(bool(self.signal_name)))
    if np.any(flags):
      self.signal_name = self.signal_name or "SIGTERM"
      return True
    return False

  def checkpoint_due(self) -> bool:
    """Whether the timer asks for a checkpoint now (process 0's clock; call at log steps)."""
    if not self.checkpoint_every_seconds:
      return False
    due = time.monotonic() - self._last_checkpoint >= self.checkpoint_every_seconds
    if jax.process_count() > 1:
      due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due

  def checkpointed(self) -> None:
    """Restarts the timer (a checkpoint was just saved)."""
    self._last_checkpoint = time.monotonic()
