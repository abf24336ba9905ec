"""Learning curves: shapes, the sliced training sets, the PNG, argument checks."""

import json
import os

import numpy as np
import pytest
from tiny_config import tiny_config

from dl.recipes import learning_curve


def test_learning_curve_at_tiny_size(tmp_path):
  config = tiny_config(num_steps=6, batch_size=64)
  curve = learning_curve.learning_curve(config, (0.03, 1.0), seeds=3, workdir=str(tmp_path))
  # digits: 1,437 train examples; 3% is 43, smaller than the batch, which shrinks to fit.
  np.testing.assert_array_equal(curve.train_sizes_F, [43, 1437])
  assert curve.values_FxS.shape == (2, 3) and curve.num_steps == 6
  assert np.all((curve.values_FxS > 0.1) & (curve.values_FxS <= 1.0))
  assert np.all(curve.std > 0)  # the seeds differ
  np.testing.assert_allclose(curve.mean, curve.values_FxS.mean(axis=1))
  assert sorted(os.listdir(tmp_path)) == [
    "learning_curve.json",
    "learning_curve.png",
    "n1437",
    "n43",
  ]
  with open(tmp_path / "learning_curve.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(tmp_path / "learning_curve.json") as f:
    assert json.load(f)["values"] == curve.values_FxS.tolist()


def test_learning_curve_checks_its_arguments(tmp_path):
  with pytest.raises(ValueError, match="plain split name"):
    learning_curve.learning_curve(tiny_config(train_split="train[:50%]"), (1.0,), 1, str(tmp_path))
  with pytest.raises(ValueError, match=r"each in \(0, 1\]"):
    learning_curve.learning_curve(tiny_config(), (0.0, 0.5), 1, str(tmp_path))
  with pytest.raises(ValueError, match="seeds must be >= 1"):
    learning_curve.learning_curve(tiny_config(), (0.5,), 0, str(tmp_path))
