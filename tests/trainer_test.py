import json
import logging
import os
import subprocess
import sys

import chex
import kill
import numpy as np
import pytest
from tiny_config import tiny_config

import dl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_writes_metrics_plot_and_checkpoints(tmp_path):
  config = tiny_config(tensorboard=True)
  state, history = dl.train(config, str(tmp_path))
  assert int(state.step) == 40
  assert [r["step"] for r in history["train"]] == [10, 20, 30, 40]
  assert [r["step"] for r in history["eval"]] == [20, 40]
  assert history["train"][-1]["loss"] < history["train"][0]["loss"]
  assert history["eval"][-1]["accuracy"] > 0.5  # 10 classes: chance is 0.1
  assert os.path.getsize(tmp_path / "curves.png") > 10_000
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[0])["split"] == "train"


@pytest.mark.parametrize("unroll", [False, True])
def test_fused_steps_land_on_the_same_steps(tmp_path, unroll):
  """Fused steps (a loop, or unrolled) log, evaluate and save at the steps single ones do."""
  config = tiny_config(log_every=5, eval_every=15, checkpoint_every=10)
  s1, h1 = dl.train(config, str(tmp_path / "one"))
  config.fit.steps_per_dispatch = 7
  config.fit.unroll_steps = unroll
  s2, h2 = dl.train(config, str(tmp_path / "fused"))
  for split in ("train", "eval"):
    assert [r["step"] for r in h1[split]] == [r["step"] for r in h2[split]]
  assert [r["step"] for r in h1["eval"]] == [15, 30, 40]
  assert os.listdir(tmp_path / "one" / "checkpoints") == os.listdir(
    tmp_path / "fused" / "checkpoints"
  )
  chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-4, atol=1e-5)


def test_resnet_with_batch_stats_trains_and_restores(tmp_path):
  config = tiny_config(model={"name": "resnet", "stage_sizes": (1,), "width": 8})
  state, _ = dl.train(config, str(tmp_path))
  restored = dl.restore(config, str(tmp_path), step=None)
  chex.assert_trees_all_equal(state.model_state, restored.model_state)
  chex.assert_trees_all_equal(state.params, restored.params)


def _cli(workdir, *overrides):
  return [
    sys.executable,
    "-m",
    "dl.cli.train",
    "--config",
    os.path.join(REPO, "tests", "tiny_config.py"),
    "--workdir",
    str(workdir),
    *overrides,
  ]


def test_exact_resume_after_process_kill(tmp_path):
  """SIGKILL after a checkpoint, resume, and end bit-identical to an uninterrupted run."""
  args = ["--config.fit.num_steps=600", "--config.fit.checkpoint_every=25"]
  config = tiny_config(num_steps=600, checkpoint_every=25)
  killed = tmp_path / "killed"
  resume = lambda: dl.train(config, str(killed))  # noqa: E731  (the command's call, here)
  assert kill.kill_then_rerun(_cli(killed, *args), killed, 50, resume=resume) < 600
  full, _ = dl.train(config, str(tmp_path / "full"))  # in this process: the same program
  resumed = dl.restore(config, str(killed), step=None)
  assert int(resumed.step) == 600
  chex.assert_trees_all_equal(full.params, resumed.params)
  chex.assert_trees_all_equal(full.opt_state, resumed.opt_state)


def test_corrupted_newest_checkpoint_resumes_from_previous(tmp_path, caplog):
  config = tiny_config()
  uninterrupted, _ = dl.train(config, str(tmp_path))  # checkpoints at 20 and 40
  for root, _, files in os.walk(tmp_path / "checkpoints" / "40"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\0")
  with caplog.at_level(logging.WARNING):
    state, _ = dl.train(config, str(tmp_path))
  assert "step 40 is unreadable" in caplog.text
  assert int(state.step) == 40
  chex.assert_trees_all_equal(state.params, uninterrupted.params)


def test_checkpoint_of_another_model_is_an_error_not_deleted(tmp_path):
  dl.train(tiny_config(), str(tmp_path))
  other = tiny_config(model={"name": "mlp", "width": 8, "depth": 1})
  with pytest.raises(dl.CheckpointError, match="none restores|no checkpoint .* restores"):
    dl.train(other, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config()
  good, _ = dl.train(config, str(tmp_path))
  config.fit.num_steps = 100
  config.learning_rate = 1e12
  with pytest.raises(
    FloatingPointError,
    match=r"('loss' became|state .* is not finite).*"
    r"last good checkpoint",
  ):
    dl.train(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]
  restored = dl.restore(config, str(tmp_path), step=None)
  chex.assert_trees_all_equal(good.params, restored.params)


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"learning_rate": -0.1}, r"config.learning_rate must be a number > 0; got -0.1"),
    ({"fit": {"batch_size": 0}}, r"config.fit.batch_size must be an integer > 0; got 0"),
    (
      {"fit": {"batch_size": 5000}},
      r"batch_size \(5000\) must be <= the number of training examples "
      r"\(1293\)",
    ),
    ({"dataset": "digitz"}, r"unknown dataset 'digitz'; did you mean 'digits'\?"),
    ({"model": {"name": "transfomer"}}, r"unknown model 'transfomer'; did you mean 'transformer'"),
  ],
)
def test_bad_config_is_named(tmp_path, overrides, message):
  config = tiny_config()
  with config.unlocked():
    config.update(overrides)
  with pytest.raises(ValueError, match=message):
    dl.train(config, str(tmp_path))


def test_unknown_config_key_is_named(tmp_path):
  config = tiny_config().to_dict()
  config["learning_rat"] = 0.1
  with pytest.raises(
    ValueError,
    match=r"unknown config key 'learning_rat'. Did you mean "
    r"'learning_rate'\?",
  ):
    dl.train(config, str(tmp_path))


def test_cli_rejects_unknown_override(tmp_path):
  out = subprocess.run(
    _cli(tmp_path, "--config.learning_rat=0.1"), capture_output=True, text=True, cwd=REPO
  )
  assert out.returncode != 0
  assert 'Did you mean "learning_rate" instead of "learning_rat"?' in out.stderr


def test_predict_and_its_input_checks(tmp_path):
  config = tiny_config()
  state, _ = dl.train(config, str(tmp_path))
  task = dl.build(config)
  images = dl.data.load("digits", "test")["image"][:5]
  probs = dl.predict(task, state, images)
  chex.assert_shape(probs, (5, 10))
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match=r"must have shape \(batch, 8, 8, 1\); got \(5, 8, 8\)"):
    dl.predict(task, state, images[..., 0])
  with pytest.raises(ValueError, match="must have dtype uint8 .*; got float32"):
    dl.predict(task, state, images.astype(np.float32))


def test_restore_without_checkpoint_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*train first"):
    dl.restore(tiny_config(), str(tmp_path), step=None)
