"""Kill a training process mid-run: the tests of exact resume share this."""

import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable


def kill_then_rerun(
  command: list[str],
  workdir: pathlib.Path,
  kill_at: int,
  *,
  timeout=180,
  resume: Callable[[], object] | None = None,
):
  """Runs `command`, SIGKILLs it once checkpoint `kill_at` exists in `workdir`, runs it again
  to the end: `command` again, or `resume()` in this process where given (the call the script
  makes, without a second process start-up). Returns the newest checkpoint step at the kill.

  Fails when the run ended (or never reached `kill_at`) before it could be killed.
  """
  checkpoints = pathlib.Path(workdir) / "checkpoints"
  proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while (
    not (checkpoints / str(kill_at)).exists() and proc.poll() is None and time.time() < deadline
  ):
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
  assert (checkpoints / str(kill_at)).exists(), f"no checkpoint {kill_at} before the kill"
  killed_at = max(int(p) for p in os.listdir(checkpoints) if p.isdigit())
  if resume is None:
    subprocess.run(command, check=True, capture_output=True)
  else:
    resume()
  return killed_at
