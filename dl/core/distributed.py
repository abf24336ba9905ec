"""Several processes, one training run: `jax.distributed` set up from the environment.

Every process runs the same program; `jax.devices()` then lists the devices of all of them,
and a mesh over those trains one model. `python -m dl.cli.launch` starts the processes on one
machine and sets, in each one's environment:

  DL_COORDINATOR_ADDRESS  host:port of process 0 (the coordinator), e.g. 127.0.0.1:8476
  DL_NUM_PROCESSES        how many processes take part
  DL_PROCESS_ID           this process's index, 0 .. DL_NUM_PROCESSES - 1

On TPU pods, SLURM and other clusters JAX finds these itself: set `DL_DISTRIBUTED=auto` and
`jax.distributed.initialize()` is called without them instead.

How long the processes wait for each other (both ways of starting; seconds, JAX's defaults):

  DL_INITIALIZATION_TIMEOUT_SECONDS  300  for every process to join at the start
  DL_HEARTBEAT_TIMEOUT_SECONDS       100  for a process that stopped answering mid-run
  DL_SHUTDOWN_TIMEOUT_SECONDS        300  for every process to reach the end

A process that dies mid-run (killed, out of memory, its host gone) stops sending heartbeats.
Within DL_HEARTBEAT_TIMEOUT_SECONDS JAX's coordinator (in process 0) declares it dead and ends
every other process (SIGABRT, exit status 134) with log lines that name it by index:

  The following tasks are unhealthy (stopped sending heartbeats):
  1

If process 0 died, the others end at once ("Failed to send RPC to coordination service. Either
the leader task was preempted/died..."). On CPU, gloo may first raise "Connection reset by peer"
(the end still comes as above), or end the others at once, naming no one ("Received data size
doesn't match expected size"). A process that fails alone (a Python error) waits up to
DL_SHUTDOWN_TIMEOUT_SECONDS for the others at JAX's shutdown barrier, then all end. In every
case, restart all processes with the same command: training resumes from the last checkpoint.

JAX's preemption service is on: a SIGTERM to any process no longer ends it but is noted, and
`jax.experimental.multihost_utils.reached_preemption_sync_point(step)` then returns True on
every process at the same step (a process that never asks ignores SIGTERM).

`python -m dl.cli.train` calls `initialize_from_env()` first thing. A script that trains on
several processes calls it too, before anything touches devices (`jax.devices()`, an array):

  import dl
  dl.core.distributed.initialize_from_env()
  dl.train(config, workdir)
"""

import contextlib
import os
from collections.abc import Iterator, Mapping

import jax
from jax.experimental import multihost_utils

COORDINATOR_ADDRESS = "DL_COORDINATOR_ADDRESS"
NUM_PROCESSES = "DL_NUM_PROCESSES"
PROCESS_ID = "DL_PROCESS_ID"
AUTO = "DL_DISTRIBUTED"
# Variable -> (jax.distributed.initialize argument, default in seconds: JAX's own).
TIMEOUTS = {
  "DL_INITIALIZATION_TIMEOUT_SECONDS": ("initialization_timeout", 300),
  "DL_HEARTBEAT_TIMEOUT_SECONDS": ("heartbeat_timeout_seconds", 100),
  "DL_SHUTDOWN_TIMEOUT_SECONDS": ("shutdown_timeout_seconds", 300),
}


def initialize_from_env(environ: Mapping[str, str] | None = None) -> bool:
  """Joins the multi-process run that the environment describes, if it describes one.

  Does nothing (and returns False) when `DL_NUM_PROCESSES` is unset or 1 and
  `DL_DISTRIBUTED` is not "auto", or when `jax.distributed` is already initialized.

  Args:
    environ: the variables to read (default: `os.environ`).

  Returns:
    Whether this call initialized `jax.distributed`.

  Raises:
    ValueError: when the variables are missing, not integers or out of range.
  """
  environ = os.environ if environ is None else environ
  if jax.distributed.is_initialized():
    return False
  auto = environ.get(AUTO, "")
  if auto not in ("", "auto"):
    raise ValueError(f"{AUTO} must be 'auto' or unset; got {auto!r}.")
  if auto == "auto":
    _initialize(**_timeouts(environ))  # The cluster (TPU pod, SLURM, ...) says who is who.
    return True
  num_processes = _int_env(environ, NUM_PROCESSES, default="1")
  if num_processes < 1:
    raise ValueError(f"{NUM_PROCESSES} must be >= 1; got {num_processes}.")
  if num_processes == 1:
    return False
  process_id = _int_env(environ, PROCESS_ID)
  if not 0 <= process_id < num_processes:
    raise ValueError(f"{PROCESS_ID} must be in [0, {num_processes}); got {process_id}.")
  address = environ.get(COORDINATOR_ADDRESS, "")
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"{COORDINATOR_ADDRESS} must look like 'host:port'; got {address!r}.")
  timeouts = _timeouts(environ)
  # CPU devices talk through gloo (the GPU and TPU backends do not read this option).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  _initialize(
    coordinator_address=address, num_processes=num_processes, process_id=process_id, **timeouts
  )
  return True


def _initialize(**kwargs) -> None:
  """`jax.distributed.initialize(**kwargs)`, with the preemption service on."""
  # Set, not assumed: reached_preemption_sync_point needs it, and JAX's default may change.
  jax.config.update("jax_enable_preemption_service", True)
  jax.distributed.initialize(**kwargs)


def _timeouts(environ: Mapping[str, str]) -> dict[str, int]:
  """The `jax.distributed.initialize` timeouts that `TIMEOUTS`' variables set, or defaults."""
  timeouts = {}
  for name, (argument, default) in TIMEOUTS.items():
    seconds = _int_env(environ, name, default=str(default))
    if seconds < 1:
      raise ValueError(f"{name} must be a whole number of seconds >= 1; got {seconds}.")
    timeouts[argument] = seconds
  return timeouts


def _int_env(environ: Mapping[str, str], name: str, default: str | None = None) -> int:
  value = environ.get(name, default)
  if value is None:
    raise ValueError(f"{name} must be set when {NUM_PROCESSES} > 1.")
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name} must be an integer; got {value!r}.") from None


def is_primary() -> bool:
  """Whether this is process 0, the one that writes logs and plots."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def primary_first(name: str) -> Iterator[None]:
  """Runs the block on process 0, then on the others (files it creates are made once)."""
  if not is_primary():
    barrier(name)
  yield
  if is_primary():
    barrier(name)
