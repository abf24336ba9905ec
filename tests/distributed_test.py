"""Several processes, one run: 2 processes x 4 devices train what 1 process x 8 devices trains."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import pytest
from tiny_config import tiny_config

import dl
from dl.cli import launch
from dl.core import distributed

TIMEOUT_S = 180  # A hung collective fails the test instead of hanging it.
HEARTBEAT_S = 10  # Low, so that a dead peer ends the run long before JAX's default 100 s.


def _launch(workdir, mode: str, *overrides: str) -> tuple[int, str]:
  """Trains the tiny config with `python -m dl.cli.launch`: 2 processes, 4 fake CPU devices each
  (`overrides`: more `--config.key=value` flags)."""
  config = os.path.join(os.path.dirname(__file__), "tiny_config.py")
  command = [
    *(sys.executable, "-m", "dl.cli.launch", "--num_processes=2", "--devices_per_process=4", "--"),
    *(sys.executable, "-m", "dl.cli.train", f"--config={config}", f"--workdir={workdir}"),
    f"--config.fit.parallel={mode}",
    *overrides,
  ]
  launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    out, _ = launcher.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    launcher.terminate()  # The launcher stops its children.
    out, _ = launcher.communicate()
    pytest.fail(f"dl.launch did not finish in {TIMEOUT_S} s:\n{out[-3000:]}")
  return launcher.returncode, out


def _records(workdir) -> list[tuple[str, int]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["split"], r["step"]) for r in map(json.loads, f)]


def test_two_processes_train_what_one_process_trains_streaming_fsdp(tmp_path):
  # Each process reads only its half of each global batch through grain
  # (`dl.data.streaming`); the one-process reference holds the data in memory. Data parallel
  # with the data in memory: faults_test's two-process test; a model axis: the last test here.
  mode = "fsdp"
  code, out = _launch(tmp_path / "2x4", mode, "--config.data_path=stream")
  assert code == 0, out[-3000:]
  assert '[0] {"workdir"' in out and '[1] {"workdir"' in out  # both finished, output prefixed

  ref, ref_history = dl.train(tiny_config(parallel=mode), str(tmp_path / "1x8"))
  state = dl.restore(tiny_config(parallel="jit"), str(tmp_path / "2x4"), step=None)
  chex.assert_trees_all_close(
    jax.device_get(state.params), jax.device_get(ref.params), rtol=1e-5, atol=1e-6
  )
  # One writer: each record once (two independent runs would each have written them).
  assert _records(tmp_path / "2x4") == _records(tmp_path / "1x8")
  history = dl.read_history(str(tmp_path / "2x4" / "metrics.jsonl"))
  assert [r["accuracy"] for r in history["eval"]] == [r["accuracy"] for r in ref_history["eval"]]
  assert os.path.exists(tmp_path / "2x4" / "curves.png")


def test_a_killed_process_ends_the_others_within_the_heartbeat_timeout_naming_it(tmp_path):
  # Started by hand, as on a cluster without dl.launch. Process 1 dies as a host does: it stops
  # answering (SIGSTOP: silent, its connections left open), and 2 s later is killed (SIGKILL)
  # mid-training. On CPU, gloo sometimes sees the broken connection first and aborts process 0
  # at once with "Received data size doesn't match expected size", naming no one (GPU and TPU
  # collectives do not use gloo): that attempt is repeated, up to three in all.
  for attempt in range(3):
    code, seconds, log = _kill_one_of_two(tmp_path / str(attempt))
    assert code != 0, log[-3000:]
    assert seconds < HEARTBEAT_S + 30, f"process 0 ended {seconds:.0f} s after:\n{log[-3000:]}"
    if GLOO_ABORT not in log:
      break
  else:
    pytest.skip(f"gloo aborted process 0 before the heartbeat timeout in 3 attempts: {GLOO_ABORT}")
  # JAX's coordinator (in process 0) declares process 1 dead and ends process 0 (SIGABRT).
  assert re.search(r"stopped sending heartbeats\):\s+1\n", log), log[-3000:]


GLOO_ABORT = "Received data size doesn't match expected size"


def _kill_one_of_two(workdir) -> tuple[int, float, str]:
  """Starts 2 training processes, stops then kills process 1 once both train; (status, seconds
  since process 1 stopped, log) of process 0, which must end by itself."""
  os.makedirs(workdir)
  config = os.path.join(os.path.dirname(__file__), "tiny_config.py")
  command = [sys.executable, "-m", "dl.cli.train", f"--config={config}"]
  command += [
    f"--workdir={workdir}",
    "--config.fit.parallel=data",
    "--config.fit.num_steps=1000000",
  ]
  port, children = launch.free_port(), []
  try:
    for i in range(2):
      env = launch.child_env(
        os.environ, process_id=i, num_processes=2, port=port, devices_per_process=4
      )
      env["DL_HEARTBEAT_TIMEOUT_SECONDS"] = str(HEARTBEAT_S)
      with open(workdir / f"{i}.log", "w") as log:
        # In workdir: where core dumps are on, process 0's abort leaves one there.
        child = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=workdir)
        children.append(child)
    deadline = time.monotonic() + TIMEOUT_S
    while not _records_written(workdir):  # A record: both processes are training.
      if time.monotonic() > deadline or any(c.poll() is not None for c in children):
        pytest.fail(f"no training record in {TIMEOUT_S} s:\n{_log(workdir, 0)}")
      time.sleep(0.2)
    children[1].send_signal(signal.SIGSTOP)
    start = time.monotonic()
    time.sleep(2)
    children[1].kill()
    try:
      code = children[0].wait(timeout=HEARTBEAT_S + 50)  # JAX's default would wait 100 s.
    except subprocess.TimeoutExpired:
      pytest.fail(f"process 0 still runs {HEARTBEAT_S + 50} s later:\n{_log(workdir, 0)}")
    return code, time.monotonic() - start, _log(workdir, 0, 100_000)
  finally:
    for child in children:
      child.kill()
      child.wait()


def _records_written(workdir) -> bool:
  path = os.path.join(workdir, "metrics.jsonl")
  return os.path.exists(path) and os.path.getsize(path) > 0


def _log(workdir, process: int, length: int = 3000) -> str:
  with open(os.path.join(workdir, f"{process}.log")) as f:
    return f.read()[-length:]


def test_launch_stops_the_others_when_one_fails():
  # Process 1 fails after a second; process 0 ignores SIGTERM and would sleep for a minute.
  child = (
    "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "i = os.environ['DL_PROCESS_ID']; print(i, os.environ['DL_NUM_PROCESSES'], os.getpid()); "
    "time.sleep(1); sys.exit(3) if i == '1' else time.sleep(60)"
  )
  out = io.StringIO()
  code = launch.launch([sys.executable, "-c", child], 2, grace_seconds=0.5, out=out)
  assert code == 3
  lines = sorted(out.getvalue().splitlines())
  assert [line.split()[:3] for line in lines] == [["[0]", "0", "2"], ["[1]", "1", "2"]]
  with pytest.raises(ProcessLookupError):  # killed after the grace period, and reaped
    os.kill(int(lines[0].split()[3]), 0)


def test_child_env_sets_the_device_count_and_keeps_other_xla_flags():
  base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x", "A": "1"}
  env = launch.child_env(base, process_id=1, num_processes=2, port=1234, devices_per_process=4)
  assert env["XLA_FLAGS"].split() == [
    "--xla_dump_to=/tmp/x",
    "--xla_force_host_platform_device_count=4",
  ]
  assert env["A"] == "1"
  assert env[distributed.COORDINATOR_ADDRESS] == "127.0.0.1:1234"
  assert (env[distributed.NUM_PROCESSES], env[distributed.PROCESS_ID]) == ("2", "1")
  assert (
    launch.child_env(base, process_id=0, num_processes=2, port=1)["XLA_FLAGS"]
    == (base["XLA_FLAGS"])
  )


@pytest.mark.parametrize(
  "env",
  [
    {"DL_DISTRIBUTED": "auto"},
    {"DL_NUM_PROCESSES": "2", "DL_PROCESS_ID": "1", "DL_COORDINATOR_ADDRESS": "host:1234"},
  ],
)
def test_timeouts_and_the_preemption_service_reach_jax(monkeypatch, env):
  calls, options = [], {}
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(jax.config, "update", options.__setitem__)
  assert distributed.initialize_from_env(env | {"DL_HEARTBEAT_TIMEOUT_SECONDS": "10"})
  assert options["jax_enable_preemption_service"] is True
  (kwargs,) = calls
  assert kwargs["heartbeat_timeout_seconds"] == 10
  assert (kwargs["initialization_timeout"], kwargs["shutdown_timeout_seconds"]) == (300, 300)


def test_one_process_is_not_distributed():
  assert not distributed.initialize_from_env({})
  assert not distributed.initialize_from_env({distributed.NUM_PROCESSES: "1"})


@pytest.mark.parametrize(
  "env, message",
  [
    ({"DL_NUM_PROCESSES": "two"}, "DL_NUM_PROCESSES must be an integer; got 'two'"),
    ({"DL_NUM_PROCESSES": "0"}, "DL_NUM_PROCESSES must be >= 1; got 0"),
    ({"DL_NUM_PROCESSES": "2"}, "DL_PROCESS_ID must be set when DL_NUM_PROCESSES > 1"),
    ({"DL_NUM_PROCESSES": "2", "DL_PROCESS_ID": "2"}, r"DL_PROCESS_ID must be in \[0, 2\); got 2"),
    (
      {"DL_NUM_PROCESSES": "2", "DL_PROCESS_ID": "0", "DL_COORDINATOR_ADDRESS": "localhost"},
      "DL_COORDINATOR_ADDRESS must look like 'host:port'; got 'localhost'",
    ),
    ({"DL_DISTRIBUTED": "yes"}, "DL_DISTRIBUTED must be 'auto' or unset; got 'yes'"),
    (
      {"DL_DISTRIBUTED": "auto", "DL_HEARTBEAT_TIMEOUT_SECONDS": "0"},
      "DL_HEARTBEAT_TIMEOUT_SECONDS must be a whole number of seconds >= 1; got 0",
    ),
    (
      {"DL_DISTRIBUTED": "auto", "DL_SHUTDOWN_TIMEOUT_SECONDS": "1.5"},
      "DL_SHUTDOWN_TIMEOUT_SECONDS must be an integer; got '1.5'",
    ),
  ],
)
def test_bad_environment_is_named(env, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize_from_env(env)


def test_two_processes_tensor_parallel_train_what_one_process_trains(tmp_path):
  """A model axis across 2 processes x 4 devices (a hybrid mesh: "data" spans the processes,
  fsdp and model stay within each) trains what one process of 8 devices trains."""
  mesh = ["parallel=mesh", "mesh_shape=data=2,fsdp=2,model=2"]
  script = os.path.join(os.path.dirname(__file__), "user_parts.py")
  command = [
    *(sys.executable, "-m", "dl.cli.launch", "--num_processes=2", "--devices_per_process=4", "--"),
    *(sys.executable, script, "tensor_parallel", str(tmp_path / "2x4"), "20", *mesh),
    "dcn_mesh_shape=data=2",
  ]
  out = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
  import user_parts

  ref, _ = user_parts.fit(
    "tensor_parallel", str(tmp_path / "1x8"), 20, **dict(m.split("=", 1) for m in mesh)
  )
  assert "model" in tuple(ref.params["Dense_0"]["kernel"].sharding.spec)
  task = user_parts.tensor_parallel_task()
  config = dl.FitConfig(num_steps=20, batch_size=32)
  state = dl.training.loop.restore(task, str(tmp_path / "2x4"), config)
  chex.assert_trees_all_close(
    jax.device_get(state.params), jax.device_get(ref.params), rtol=1e-5, atol=1e-6
  )
  assert _records(tmp_path / "2x4") == _records(tmp_path / "1x8")
