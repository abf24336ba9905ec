"""One run per workdir: a lock file that names its holder, and stale locks taken over.

`<workdir>/dl.core.lock` holds JSON: the holder's process id, host, start time (of the run and of
the process, so a reused pid is not mistaken for it), command line and number of processes.
It is created atomically with its content (written beside it, then hard-linked to its name);
a run that finds it refuses to start with an error naming the holder, unless the holder is
gone:

- on this host, its process no longer exists (or is another process under the same pid);
- on another host (a shared filesystem), the lock has not been refreshed (`refresh`, which the
  loop calls at every log step) for `stale_after_seconds`.

A stale lock is taken over with a warning. Processes of one multi-process run share the lock
that process 0 holds: only process 0 takes and releases it (see `dl.training.loop.fit`).
"""

import datetime
import json
import logging
import os
import socket
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

LOCK_FILE = "dl.core.lock"
STALE_AFTER_SECONDS = 600.0


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirLock:
  """The lock of one workdir (see the module docstring).

  Args:
    workdir: the run's directory (created if needed).
    stale_after_seconds: how old a lock of another host may grow before it counts as stale.
  """

  def __init__(self, workdir: str, *, stale_after_seconds: float = STALE_AFTER_SECONDS):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.stale_after_seconds = stale_after_seconds
    self._held = False

  def acquire(self, num_processes: int = 1) -> None:
    """Takes the lock, or a stale one over; raises `WorkdirLockedError` if a live run holds it."""
    for _ in range(3):  # Another run may take over the same stale lock at the same moment.
      try:
        self._create(num_processes)
      except FileExistsError:
        holder = self._read()
        if holder is None and not os.path.exists(self.path):
          continue  # released in between
        if holder is not None and not self._is_stale(holder):
          raise WorkdirLockedError(_locked_message(self.path, holder)) from None
        log.warning("%s", _stale_message(self.path, holder))
        self._remove()
        continue
      self._held = True
      return
    raise WorkdirLockedError(f"could not take the lock {self.path}: other runs keep taking it.")

  def refresh(self) -> None:
    """Marks the lock as alive (its modification time), for holders on other hosts to see."""
    if self._held:
      os.utime(self.path)

  def release(self) -> None:
    """Gives the lock back if this process holds it."""
    if self._held:
      self._held = False
      self._remove()

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()

  def _read(self) -> dict[str, Any] | None:
    """The holder's record; None when the file is unreadable (a crash while writing it)."""
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def _create(self, num_processes: int) -> None:
    """Creates the lock file with its content in one step, so no reader sees it half written:
    written beside it, then hard-linked to its name (raises `FileExistsError` if taken)."""
    tmp = f"{self.path}.{socket.gethostname()}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(_this_process(num_processes), f)
    try:
      os.link(tmp, self.path)
    finally:
      os.remove(tmp)

  def _is_stale(self, holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname():
      return not _alive(holder.get("pid"), holder.get("process_start"))
    try:
      age = time.time() - os.path.getmtime(self.path)
    except OSError:
      return True
    return age > self.stale_after_seconds

  def _remove(self) -> None:
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass


def _this_process(num_processes: int) -> dict[str, Any]:
  return {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "process_start": _process_start(os.getpid()),
    "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": " ".join(sys.argv),
    "num_processes": num_processes,
  }


def _process_start(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: Any, process_start: str | None) -> bool:
  if not isinstance(pid, int):
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Someone else's live process.
  return process_start is None or _process_start(pid) in (None, process_start)


def _locked_message(path: str, holder: dict[str, Any]) -> str:
  return (
    f"the workdir is in use: {path} says process {holder.get('pid')} on host "
    f"{holder.get('host')!r} has run there since {holder.get('started')} "
    f"({holder.get('command')!r}). Wait for that run to finish or stop it, or train in another "
    "workdir; if that run is dead and the lock is wrong, delete the lock file."
  )


def _stale_message(path: str, holder: dict[str, Any] | None) -> str:
  if holder is None:
    return f"taking over {path}: it is unreadable (a run crashed while writing it)."
  return (
    f"taking over {path}: its holder, process {holder.get('pid')} on host "
    f"{holder.get('host')!r} (since {holder.get('started')}), is gone."
  )
