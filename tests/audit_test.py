"""The one-run privacy audit: its bound, and what it finds in tiny runs with and without DP."""

import functools
import importlib.util
import math
import pathlib
import sys

import numpy as np
import optax
import pytest

import dl
from dl import models
from dl.trust import privacy
from dl.trust.privacy import audit


def test_all_guesses_right_give_the_randomized_response_bound():
  # delta = 0: r right of r rejects epsilon while q(eps)^r < 0.05, q = e^eps / (1 + e^eps).
  q = 0.05 ** (1 / 64)
  expected = math.log(q / (1 - q))
  bound = audit.epsilon_lower_bound(256, 64, 64, delta=0.0)
  assert bound == pytest.approx(expected, rel=1e-6)
  # delta > 0 can only lower it; half right is chance and gives nothing.
  assert audit.epsilon_lower_bound(256, 64, 64, delta=1e-5) <= bound
  assert audit.epsilon_lower_bound(256, 64, 32, delta=1e-5) == 0.0


def test_scores_that_separate_the_canaries_give_a_bound_and_random_ones_do_not():
  rng = np.random.default_rng(0)
  included = rng.random(400) < 0.5
  perfect = audit.lower_bound(included + rng.normal(0, 0.1, 400), included, delta=1e-5)
  assert perfect.guesses == 100 and perfect.correct == 100
  assert perfect.epsilon_lower_bound > 3
  noise = audit.lower_bound(rng.normal(size=400), included, delta=1e-5)
  assert noise.epsilon_lower_bound < 1
  with pytest.raises(ValueError, match="k_in \\+ k_out \\(500\\) must be at most the 400"):
    audit.lower_bound(rng.normal(size=400), included, delta=1e-5, k_in=250, k_out=250)


def test_insert_canaries_relabels_and_flips_a_coin():
  arrays = {"input": np.arange(100.0)[:, None], "label": np.arange(100) % 10}
  train, canaries, included = audit.insert_canaries(arrays, 40, num_classes=10, seed=1)
  assert len(canaries["label"]) == 40 and 10 < included.sum() < 30
  assert len(train["label"]) == 60 + included.sum()
  original = canaries["input"][:, 0].astype(int) % 10
  assert np.all(canaries["label"] != original)  # every canary's label is wrong
  trained = set(train["input"][:, 0])
  assert all((x in trained) == inc for x, inc in zip(canaries["input"][:, 0], included))


def _audited_run(tmp_path, noise_multiplier):
  """A tiny MLP on digits with 256 canaries; (audit, accounted epsilon or inf)."""
  arrays = dl.data.sources.as_arrays(("digits", "train"), "train")
  arrays = {
    "input": arrays["input"].reshape(len(arrays["label"]), -1) / 16.0,
    "label": arrays["label"],
  }
  train, canaries, included = audit.insert_canaries(arrays, 256, num_classes=10, seed=0)
  steps, batch = 800, 64
  model = models.MLP(num_classes=10, width=128, depth=1)
  step = dl.train_step
  data = train
  if noise_multiplier:
    size = privacy.max_batch_size(len(train["label"]), batch / len(train["label"]), steps)
    data = privacy.PoissonData(train, max_batch_size=size)
    step = functools.partial(
      privacy.dp_train_step,
      l2_clip=1.0,
      noise_multiplier=noise_multiplier,
      expected_batch_size=batch,
    )
  task = dl.task(
    model=model,
    objective=dl.core.objectives.classification,
    optimizer=optax.adam(3e-3),
    train=data,
    validation_fraction=0.0,  # every included canary is trained on
    train_step=step,
    preprocess={},
  )
  state, _ = dl.fit(
    task, str(tmp_path), num_steps=steps, batch_size=batch, progress=False, tensorboard=False
  )
  scores = audit.membership_scores(state, task.model, task.objective, canaries)
  result = audit.lower_bound(scores, included, delta=1e-5)
  eps = float("inf")
  if noise_multiplier:
    eps = privacy.epsilon(
      batch / len(train["label"]),
      noise_multiplier,
      steps,
      1e-5,
      num_examples=len(train["label"]),
      max_batch_size=data.max_batch_size,
    )
  return result, eps


def test_audit_finds_a_non_private_run_out_and_stays_below_a_dp_runs_epsilon(tmp_path):
  leaky, _ = _audited_run(tmp_path / "plain", 0.0)
  assert leaky.epsilon_lower_bound > 1.0, leaky  # memorised canaries: clearly not private
  private, eps = _audited_run(tmp_path / "dp", 3.0)
  assert eps < 2.0
  assert private.epsilon_lower_bound < eps, (private, eps)


def test_the_study_runs_short(tmp_path, monkeypatch, capsys):
  path = pathlib.Path(__file__).parent.parent / "experiments" / "dp_study.py"
  spec = importlib.util.spec_from_file_location("dp_study", path)
  study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study)
  argv = ["dp_study", "--dataset=credit", "--noise", "0", "1.0", "--num_steps=10"]
  monkeypatch.setattr(sys, "argv", [*argv, f"--workdir={tmp_path}"])
  study.main()
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith(("| 0", "| 1"))]
  assert len(rows) == 2 and "| inf | inf |" in rows[0], out
