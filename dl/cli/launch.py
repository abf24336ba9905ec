r"""Command line: runs one training run as several processes on this machine.

  python -m dl.cli.launch --num_processes 2 --devices_per_process 4 -- \
      python -m dl.cli.train --config experiments/digits_cnn.py --workdir /tmp/digits_2x4 \
      --config.fit.parallel=fsdp

Each child runs the command after `--` with `DL_COORDINATOR_ADDRESS` (127.0.0.1 and a free
port), `DL_NUM_PROCESSES` and `DL_PROCESS_ID` set (read by `dl.core.distributed`), and with
`--devices_per_process` fake CPU devices when that is given; the rest of the environment,
`DL_HEARTBEAT_TIMEOUT_SECONDS` and the other timeouts of `dl.core.distributed` included, is
inherited. Output lines come prefixed with the process index. When a child fails, the others
are stopped: SIGTERM (which JAX's preemption service catches: a run that checks
`reached_preemption_sync_point` stops at its next step, others carry on), then SIGKILL after
`--grace_seconds`; the exit status is then the first failure's.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from absl import app, flags

from dl import cli
from dl.core import distributed

_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "How many processes to start.", lower_bound=1
)
_DEVICES_PER_PROCESS = flags.DEFINE_integer(
  "devices_per_process",
  0,
  "Fake CPU devices per process (sets XLA_FLAGS); 0 keeps the inherited setting.",
  lower_bound=0,
)
_PORT = flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1 (0: a free one).")
_GRACE_SECONDS = flags.DEFINE_float(
  "grace_seconds", 10.0, "After a failure, how long the others get to stop before being killed."
)
flags.mark_flag_as_required("num_processes")

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(
  base: Mapping[str, str],
  *,
  process_id: int,
  num_processes: int,
  port: int,
  devices_per_process: int = 0,
) -> dict[str, str]:
  """`base` plus what process `process_id` needs to join the run (see `dl.core.distributed`)."""
  env = dict(base)
  env[distributed.COORDINATOR_ADDRESS] = f"127.0.0.1:{port}"
  env[distributed.NUM_PROCESSES] = str(num_processes)
  env[distributed.PROCESS_ID] = str(process_id)
  env["PYTHONUNBUFFERED"] = "1"  # Lines reach the terminal as they are printed.
  if devices_per_process:
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join([*kept, f"{_DEVICE_COUNT_FLAG}={devices_per_process}"])
  return env


def launch(
  command: Sequence[str],
  num_processes: int,
  *,
  devices_per_process: int = 0,
  port: int = 0,
  grace_seconds: float = 10.0,
  out: TextIO | None = None,
) -> int:
  """Runs `command` as `num_processes` processes of one run and waits for them.

  Args:
    command: the program and its arguments, e.g. ["python", "-m", "dl.cli.train", ...].
    num_processes: how many copies to start.
    devices_per_process: fake CPU devices per process (0: as inherited).
    port: the coordinator's port on 127.0.0.1 (0: a free one).
    grace_seconds: after a failure, how long the others get to exit before being killed.
    out: where the children's prefixed output goes (default: stdout).

  Returns:
    0 when every process succeeded, else the first failure's exit status.
  """
  out = sys.stdout if out is None else out
  port = port or free_port()
  lock = threading.Lock()
  children, relays = [], []
  try:
    for i in range(num_processes):
      env = child_env(
        os.environ,
        process_id=i,
        num_processes=num_processes,
        port=port,
        devices_per_process=devices_per_process,
      )
      child = subprocess.Popen(
        list(command),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
      )
      children.append(child)
      relay = threading.Thread(target=_relay, args=(child.stdout, f"[{i}] ", out, lock))
      relay.start()
      relays.append(relay)
    try:
      return _wait(children, grace_seconds)
    except _Terminated:  # Pass the signal on: each process checkpoints and exits (status 75).
      for child in children:
        if child.poll() is None:
          child.terminate()
      return _wait(children, grace_seconds)
  finally:
    _stop([c for c in children if c.poll() is None], grace_seconds)
    for relay in relays:
      relay.join()


def _relay(stream: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
  """Copies a child's output lines to `out`, each behind `prefix`."""
  for line in stream:
    with lock:
      out.write(prefix + line if line.endswith("\n") else f"{prefix}{line}\n")
      out.flush()
  stream.close()


def _wait(children: list[subprocess.Popen], grace_seconds: float) -> int:
  """Waits for every child; at the first failure stops the others and returns its status."""
  running = list(children)
  while running:
    for child in list(running):
      code = child.poll()
      if code is None:
        continue
      running.remove(child)
      if code != 0:
        _stop(running, grace_seconds)
        return code if code > 0 else 128 - code  # -N: killed by signal N, as a shell says.
    time.sleep(0.05)
  return 0


def _stop(children: list[subprocess.Popen], grace_seconds: float) -> None:
  """Terminates `children`, then kills the ones still running after `grace_seconds`."""
  for child in children:
    child.terminate()
  deadline = time.monotonic() + grace_seconds
  for child in children:
    try:
      child.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()


class _Terminated(Exception):
  """The launcher received SIGTERM."""


def _raise_terminated(signum, frame) -> None:
  del signum, frame
  raise _Terminated


def main(argv: list[str]) -> None:
  command = argv[1:]
  if not command:
    raise app.UsageError("give the command to run after `--`, e.g. -- python -m dl.cli.train ...")
  # A terminated launcher terminates its children, which save a checkpoint and exit with
  # status 75 (`dl.training.preemption`); it waits for them and returns that status.
  signal.signal(signal.SIGTERM, _raise_terminated)
  sys.exit(
    launch(
      command,
      _NUM_PROCESSES.value,
      devices_per_process=_DEVICES_PER_PROCESS.value,
      port=_PORT.value,
      grace_seconds=_GRACE_SECONDS.value,
    )
  )


def run() -> None:
  """The `dl-launch` command (pyproject's [project.scripts])."""
  cli.run(__name__, main)


if __name__ == "__main__":
  app.run(main)
