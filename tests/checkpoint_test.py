import glob
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from dl.checkpoint import Checkpointer


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
