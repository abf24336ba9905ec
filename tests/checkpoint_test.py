import errno
import glob
import logging
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity
from orbax.checkpoint._src.serialization import serialization

from dl.core.checkpoint import Checkpointer, CheckpointWriteError

REPO = pathlib.Path(__file__).resolve().parent.parent


def _state(i):
  return {"w": jnp.arange(4.0) + i, "rng": jax.random.PRNGKey(i), "step": jnp.int32(i)}


def _save_all(directory, accuracies, **kwargs):
  ckpt = Checkpointer(directory, **kwargs)
  for i, acc in enumerate(accuracies):
    ckpt.save(i * 10, _state(i), {"epoch": 0, "index": i}, {"accuracy": acc})
  ckpt.wait()
  return ckpt


def test_keeps_latest_k_and_the_best(tmp_path):
  ckpt = _save_all(tmp_path / "ckpt", [0.5, 0.9, 0.6, 0.7, 0.65], keep=2, best_metric="accuracy")
  assert ckpt.all_steps() == [10, 30, 40]
  assert ckpt.best_step() == 10


def test_best_by_min_metric(tmp_path):
  ckpt = _save_all(
    tmp_path / "ckpt", [0.5, 0.9, 0.1, 0.7], keep=1, best_metric="accuracy", best_mode="min"
  )
  assert ckpt.all_steps() == [20, 30]


def test_restores_state_and_data_position(tmp_path):
  ckpt = _save_all(tmp_path / "ckpt", [0.1, 0.2], keep=3)
  step, state, position = ckpt.restore(_state(0))
  assert step == 10 and position == {"epoch": 0, "index": 1}
  np.testing.assert_array_equal(state["w"], _state(1)["w"])
  np.testing.assert_array_equal(state["rng"], _state(1)["rng"])


def test_corrupted_newest_falls_back_with_warning(tmp_path, caplog):
  ckpt = _save_all(tmp_path / "ckpt", [0.1, 0.2, 0.3], keep=3)
  for f in glob.glob(str(tmp_path / "ckpt" / "20" / "state" / "**"), recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(b"not a checkpoint")
  with caplog.at_level(logging.WARNING):
    step, state, _ = ckpt.restore(_state(0))
  assert step == 10
  np.testing.assert_array_equal(state["w"], _state(1)["w"])
  assert "step 20 is unreadable" in caplog.text
  assert ckpt.all_steps() == [0, 10]
  assert os.listdir(tmp_path / "corrupted")  # moved aside, not deleted


def test_half_written_save_is_ignored(tmp_path):
  _save_all(tmp_path / "ckpt", [0.1, 0.2], keep=3)
  # What a process killed mid-save leaves: orbax's temporary directory, never renamed.
  partial = tmp_path / "ckpt" / "20.orbax-checkpoint-tmp-1234567"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "junk").write_bytes(b"\0" * 10)
  reopened = Checkpointer(tmp_path / "ckpt", keep=3)
  step, _, _ = reopened.restore(_state(0))
  assert step == 10
  assert reopened.all_steps() == [0, 10]


def test_no_checkpoint_returns_none(tmp_path):
  assert Checkpointer(tmp_path / "empty").restore(_state(0)) is None


def test_half_written_save_is_removed_at_the_next_save(tmp_path):
  _save_all(tmp_path / "ckpt", [0.1], keep=3)
  partial = tmp_path / "ckpt" / "20.orbax-checkpoint-tmp"
  (partial / "state").mkdir(parents=True)
  reopened = Checkpointer(tmp_path / "ckpt", keep=3)  # orbax's cleanup_tmp_directories
  reopened.save(30, _state(3), {"index": 3})
  reopened.close()
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["0", "30"]


def test_synchronous_saves_are_on_disk_when_save_returns(tmp_path):
  ckpt = Checkpointer(tmp_path / "ckpt", async_saves=False)
  ckpt.save(10, _state(1), {"index": 1})
  assert os.path.isfile(tmp_path / "ckpt" / "10" / "_CHECKPOINT_METADATA")
  ckpt.check()
  ckpt.close()


def test_check_is_quiet_while_saves_succeed(tmp_path):
  ckpt = Checkpointer(tmp_path / "ckpt")
  for step in (10, 20):
    ckpt.save(step, _state(step), {"index": step})
    ckpt.check()  # never waits; nothing to report
  ckpt.close()
  assert Checkpointer(tmp_path / "ckpt").restore(_state(0))[0] == 20


def _fail_writes(monkeypatch, error):
  """Makes orbax's background array writes fail with `error` (as a full disk does)."""

  async def failing_write(*args, **kwargs):
    del args, kwargs
    raise error

  monkeypatch.setattr(serialization, "async_serialize_from_host", failing_write)


def test_failed_background_save_raises_once_and_keeps_the_last_good(tmp_path, monkeypatch):
  directory = tmp_path / "ckpt"
  ckpt = Checkpointer(directory)
  ckpt.save(10, _state(1), {"index": 1})
  ckpt.wait()
  _fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
  ckpt.save(20, _state(2), {"index": 2})  # returns: the write fails in the background
  with pytest.raises(CheckpointWriteError) as raised:
    ckpt.wait()
  message = str(raised.value)
  assert f"checkpoint of step 20 to {directory}: the disk is full" in message
  needed_and_free = r"needs about \d+ bytes \(the size of the state\) and [\d.]+ [kMGT]?B is free"
  assert re.search(needed_and_free, message)
  assert "The last good checkpoint, step 10, is kept" in message
  assert raised.value.step == 20 and raised.value.last_good_step == 10
  ckpt.check()  # reported once
  ckpt.wait()
  assert os.listdir(directory) == ["10"]  # the half-written step 20 is gone
  monkeypatch.undo()
  ckpt.save(30, _state(3), {"index": 3})  # usable again once the disk is
  ckpt.close()
  step, _, position = Checkpointer(directory).restore(_state(0))
  assert (step, position) == (30, {"index": 3})


def test_unwritable_directory_fails_in_save_naming_the_path(tmp_path, monkeypatch):
  directory = tmp_path / "ckpt"
  ckpt = Checkpointer(directory, async_saves=False)
  ckpt.save(10, _state(1), {"index": 1})

  async def refuse(paths, **kwargs):
    del kwargs
    raise PermissionError(errno.EACCES, "Permission denied", str(paths[0].get()))

  monkeypatch.setattr(atomicity, "create_all", refuse)
  with pytest.raises(CheckpointWriteError, match=r"step 20 .* permission denied on /\S+/20\.orbax"):
    ckpt.save(20, _state(2), {"index": 2})
  monkeypatch.undo()
  ckpt.close()
  assert Checkpointer(directory).restore(_state(0))[0] == 10


def test_close_logs_an_unreported_failure_instead_of_raising(tmp_path, monkeypatch, caplog):
  ckpt = Checkpointer(tmp_path / "ckpt")
  _fail_writes(monkeypatch, ValueError("RESOURCE_EXHAUSTED: [os_error_code='28']"))
  ckpt.save(10, _state(1), {"index": 1})
  with caplog.at_level(logging.ERROR, logger="dl.core.checkpoint"):
    ckpt.close()  # runs in `finally` blocks: must not bury the error being raised there
  assert "checkpoint of step 10" in caplog.text and "no earlier checkpoint" in caplog.text
  assert not os.listdir(tmp_path / "ckpt")


def _process_hooks():
  """Every logger's handlers and filters, and `sys.unraisablehook`: what a library must not keep."""
  loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
  return sys.unraisablehook, {x.name: (list(x.handlers), list(x.filters)) for x in loggers}


def test_open_save_fail_and_close_leave_the_process_loggers_and_hook_as_they_were(
  tmp_path, monkeypatch
):
  before = _process_hooks()
  ckpt = Checkpointer(tmp_path / "ckpt", best_metric="accuracy")
  ckpt.save(10, _state(1), {"index": 1})  # without metrics: orbax's warning is dropped for it
  ckpt.save(20, _state(2), {"index": 2}, {"accuracy": 0.5})
  ckpt.wait()
  assert _process_hooks() == before  # nothing is kept while no save is in flight
  _fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
  ckpt.save(30, _state(3), {"index": 3}, {"accuracy": 0.6})
  with pytest.raises(CheckpointWriteError):
    ckpt.wait()
  ckpt.close()
  assert _process_hooks() == before


# A run whose second checkpoint fails, checking at each "event step" as the loop does.
_FAILING_RUN = """
import errno, sys, time
import jax
from dl.core.checkpoint import Checkpointer

directory, fault = sys.argv[1], sys.argv[2]
def state(i):  # 600 kB in 6 arrays: one write each, in flight together
  keys = jax.random.split(jax.random.PRNGKey(i), 6)
  return {"step": i, "w": [jax.random.normal(key, (25_000,)) for key in keys]}
ckpt = Checkpointer(directory)
try:
  ckpt.save(10, state(1), {"index": 1})  # 600 kB: fits on a 1 MiB disk, but not twice
  ckpt.wait()
  if fault == "patched":
    from orbax.checkpoint._src.serialization import serialization
    async def full(*args, **kwargs):
      raise OSError(errno.ENOSPC, "No space left on device")
    serialization.async_serialize_from_host = full
  ckpt.save(20, state(2), {"index": 2})
  for _ in range(3000):
    ckpt.check()
    time.sleep(0.01)
  print("no error")
finally:
  ckpt.close()
"""


def _run_out_of_space(directory, fault: str) -> list[str]:
  """Runs `_FAILING_RUN`; returns its stderr lines other than traceback frames."""
  out = subprocess.run(
    [sys.executable, "-c", _FAILING_RUN, str(directory), fault],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert out.returncode == 1, out.stdout + out.stderr
  return [line for line in out.stderr.splitlines() if line and not line.startswith("  ")]


def _assert_one_clear_error(lines: list[str], directory) -> None:
  assert lines[0] == "Traceback (most recent call last):", lines
  # No cascade: one traceback, none of orbax's logs, closed event loops or shutdown noise.
  cascade = ("Traceback", "Event loop is closed", "meta_path", "orbax", "Exception ignored")
  assert not [line for line in lines[1:-1] if any(word in line for word in cascade)], lines
  lines = [lines[0], lines[-1]]
  assert lines[1].startswith(
    f"dl.core.checkpoint.CheckpointWriteError: could not write the checkpoint of step 20 to "
    f"{directory}: the disk is full: it needs about 600.0 kB (the size of the state) and "
  ), lines[1]
  assert "is free there" in lines[1]
  assert "The last good checkpoint, step 10, is kept" in lines[1]
  assert os.listdir(directory) == ["10"]
  target = {"step": 0, "w": [jnp.zeros(25_000)] * 6}
  step, _, position = Checkpointer(directory).restore(target)
  assert (step, position) == (10, {"index": 1})


def test_failed_write_in_a_subprocess_prints_one_clear_error(tmp_path):
  """Where no small disk can be mounted: orbax's writes made to fail as on a full disk."""
  directory = tmp_path / "ckpt"
  _assert_one_clear_error(_run_out_of_space(directory, "patched"), directory)


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs (needs root and `mount`; skipped where they are missing)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  try:
    mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
  except FileNotFoundError:
    pytest.skip("no mount command")
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
  try:
    yield disk
  finally:
    subprocess.run(["umount", str(disk)], check=True)


def test_full_disk_prints_one_clear_error_and_the_last_checkpoint_restores(small_disk):
  directory = small_disk / "ckpt"
  _assert_one_clear_error(_run_out_of_space(directory, "none"), directory)


# `dl.fit` of an MLP whose checkpoint (630 kB with Adam's moments) fits once on a 1 MiB disk.
_FIT = """
import sys
import flax.linen as nn, numpy as np, optax
import dl

class MLP(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(10)(nn.relu(nn.Dense(700)(x)))

rng = np.random.default_rng(0)
arrays = {"input": rng.normal(size=(256, 64)).astype(np.float32), "label": rng.integers(0, 10, 256)}
task = dl.task(model=MLP(), objective=dl.core.objectives.classification, optimizer=optax.adam(1e-3),
               train=arrays, eval=arrays)
config = dl.FitConfig(num_steps=40, batch_size=32, checkpoint_every=20, eval_every=20,
                      log_every=20, progress=False, tensorboard=False)
if sys.argv[2] == "fit":
  dl.fit(task, sys.argv[1], config)
else:
  print("restored step", int(dl.training.loop.restore(task, sys.argv[1], config).step))
"""


def test_fit_on_a_full_disk_stops_with_one_clear_error_and_resumes_from_the_last(small_disk):
  workdir = small_disk / "run"
  command = [sys.executable, "-c", _FIT, str(workdir)]
  out = subprocess.run([*command, "fit"], capture_output=True, text=True, cwd=REPO)
  lines = [line for line in out.stderr.splitlines() if line and not line.startswith("  ")]
  assert out.returncode == 1 and len(lines) == 2, out.stderr
  assert lines[1].startswith(
    f"dl.core.checkpoint.CheckpointWriteError: could not write the checkpoint of step 40 to "
    f"{workdir / 'checkpoints'}: the disk is full: it needs about 630."
  ), lines[1]
  assert "The last good checkpoint, step 20, is kept" in lines[1]
  out = subprocess.run([*command, "restore"], capture_output=True, text=True, cwd=REPO, check=True)
  assert "restored step 20" in out.stdout
