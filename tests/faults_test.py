"""Faults a long run meets: preemption (SIGTERM), a second run in the same workdir, a dead
holder of the workdir's lock."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import chex
import jax
import pytest
import user_parts

import dl
from dl.core.lock import WorkdirLock, WorkdirLockedError
from dl.training import preemption

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "tests" / "user_parts.py")
STEPS = 1000
SLOW = {**os.environ, "DL_TEST_SLOW_SECONDS": "0.01"}  # at most ~1,000 steps/s anywhere
FAR_EVERY = 100000  # no scheduled checkpoint before the end
FAR = f"checkpoint_every={FAR_EVERY}"


def _script(workdir, *overrides, steps=STEPS):
  return [sys.executable, SCRIPT, "two_input", str(workdir), str(steps), FAR, *overrides]


def _written(path: pathlib.Path) -> bool:
  return path.exists() and path.stat().st_size > 0


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 180) -> None:
  """Waits until `path` holds something: metrics.jsonl is opened before the signal handlers
  go in, so only its first record says that training (and its SIGTERM handling) has begun."""
  deadline = time.time() + timeout
  while not _written(path) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  assert _written(path), f"{path} never got written (the run ended with {proc.poll()})"


def _checkpoints(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())


def _records(workdir: pathlib.Path) -> list[tuple[str, int]]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [(r["split"], r["step"]) for r in map(json.loads, lines)]


def _final(workdir: pathlib.Path, steps: int = STEPS):
  config = dl.FitConfig(num_steps=steps, batch_size=32)
  return dl.training.loop.restore(user_parts.two_input_task(), str(workdir), config)


def test_sigterm_saves_the_step_reached_the_lock_stops_a_second_run_and_a_dead_one_is_taken_over(
  tmp_path,
):
  """SIGTERM: a checkpoint at the step reached, exit status 75, the lock released. A second run
  on a locked workdir fails at once naming the first; after the first is SIGKILLed, the next
  run takes its stale lock over; the resumed run ends bitwise-equal to an uninterrupted one."""
  # The uninterrupted reference: the script's own call, in this process (no start-up to pay).
  user_parts.fit("two_input", str(tmp_path / "full"), STEPS, checkpoint_every=FAR_EVERY)
  run = tmp_path / "run"
  proc = subprocess.Popen(_script(run), stderr=subprocess.PIPE, text=True, env=SLOW)
  _wait_for(run / "metrics.jsonl", proc)  # the first train record: training has started
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == preemption.EXIT_CODE, stderr
  (stopped_at,) = _checkpoints(run)
  assert 0 < stopped_at < STEPS  # the step reached, far from any scheduled checkpoint
  assert f"stopped by SIGTERM at step {stopped_at}" in stderr
  assert not (run / "dl.core.lock").exists()

  proc = subprocess.Popen(
    _script(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=SLOW
  )
  _wait_for(run / "dl.core.lock", proc)
  holder = json.loads((run / "dl.core.lock").read_text())
  assert holder["pid"] == proc.pid
  with pytest.raises(WorkdirLockedError, match=rf"process {proc.pid} on host .* has run there"):
    user_parts.fit("two_input", str(run), STEPS)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (run / "dl.core.lock").exists()  # a dead holder's lock stays behind ...

  result = subprocess.run(_script(run), capture_output=True, text=True, env=SLOW)
  assert result.returncode == 0, result.stderr
  assert (
    "taking over" in result.stderr and f"process {proc.pid}" in result.stderr
  )  # ... is taken over
  chex.assert_trees_all_equal(_final(tmp_path / "full"), _final(run))


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_and_resumes_exactly(tmp_path):
  """2 processes x 4 fake devices (data parallel) train what 1 process x 8 devices trains; a
  SIGTERM to process 1 alone stops both after saving one checkpoint at the same step; the
  resumed run equals the uninterrupted one bit for bit."""
  launch = [sys.executable, "-m", "dl.cli.launch", "--num_processes=2", "--devices_per_process=4"]
  steps = 100  # a data-parallel step across two processes on CPU takes tens of ms

  def command(workdir):
    return [*launch, "--", *_script(workdir, "parallel=data", steps=steps)]

  subprocess.run(command(tmp_path / "full"), check=True, capture_output=True, env=SLOW)
  # What one process trains, but for the order of the reductions across processes: after
  # 100 Adam steps the parameters differ by 7e-6 at the most (seen here).
  one, _ = user_parts.fit(
    "two_input", str(tmp_path / "1x8"), steps, parallel="data", checkpoint_every=FAR_EVERY
  )
  full = _final(tmp_path / "full", steps)
  chex.assert_trees_all_close(
    jax.device_get(full.params), jax.device_get(one.params), rtol=1e-4, atol=2e-5
  )
  assert _records(tmp_path / "full") == _records(tmp_path / "1x8")  # each written once
  run = tmp_path / "run"
  proc = subprocess.Popen(
    command(run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=SLOW
  )
  _wait_for(run / "metrics.jsonl", proc)
  children = subprocess.run(
    ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
  ).stdout.split()  # the launcher's two processes
  assert len(children) == 2, children
  os.kill(max(map(int, children)), signal.SIGTERM)  # one process only (the later-started one)
  output, _ = proc.communicate(timeout=180)
  assert proc.returncode == preemption.EXIT_CODE, output
  (stopped_at,) = _checkpoints(run)
  assert 0 < stopped_at < steps
  assert output.count(f"stopped by SIGTERM at step {stopped_at}") == 1  # process 0 says it
  subprocess.run(command(run), check=True, capture_output=True, env=SLOW)
  chex.assert_trees_all_equal(full, _final(run, steps))


def test_lock_of_a_live_process_is_kept_and_released_on_exit(tmp_path):
  first = WorkdirLock(str(tmp_path))
  first.acquire()
  with pytest.raises(WorkdirLockedError, match=rf"process {os.getpid()} on host"):
    WorkdirLock(str(tmp_path)).acquire()
  first.release()
  with WorkdirLock(str(tmp_path)):  # free again
    assert (tmp_path / "dl.core.lock").exists()
  assert not (tmp_path / "dl.core.lock").exists()


def test_stale_lock_of_another_host_is_taken_over_after_its_timeout(tmp_path, caplog):
  (tmp_path / "dl.core.lock").write_text(
    json.dumps({"pid": 1, "host": "elsewhere", "started": "x"})
  )
  with pytest.raises(WorkdirLockedError, match="'elsewhere'"):
    WorkdirLock(str(tmp_path), stale_after_seconds=3600).acquire()
  old = time.time() - 7200
  os.utime(tmp_path / "dl.core.lock", (old, old))
  lock = WorkdirLock(str(tmp_path), stale_after_seconds=3600)
  lock.acquire()
  assert (
    "taking over" in caplog.text
    and json.loads((tmp_path / "dl.core.lock").read_text())["pid"] == os.getpid()
  )
  lock.release()


def test_checkpoint_timer_saves_between_scheduled_checkpoints(tmp_path):
  """`checkpoint_every_seconds`: with a 0.05 s timer and 10 ms per log step, checkpoints appear
  between the scheduled ones (here: none scheduled before the end)."""
  user_parts.fit(
    "two_input",
    str(tmp_path),
    200,
    checkpoint_every=100000,
    eval_every=200,
    checkpoint_every_seconds=0.05,
    keep_checkpoints=100,
    hooks=[user_parts.Slow(0.01)],
  )
  steps = _checkpoints(tmp_path)
  assert steps[-1] == 200 and len(steps) > 2
