"""Calibration: ECE on hand-made probabilities, temperature scaling, scores, reliability PNG."""

import numpy as np
import pytest

from dl.trust import calibration


def _binary(p_positive):
  p = np.asarray(p_positive, np.float64)
  return np.stack([1 - p, p], axis=1)


def test_ece_of_hand_made_probabilities():
  # Confidences 0.75, 0.75 (bin (0.7, 0.8]: 1 of 2 right), 0.55 (right), 0.95 (right):
  # ECE = 2/4 * |0.5 - 0.75| + 1/4 * |1 - 0.55| + 1/4 * |1 - 0.95| = 0.25.
  probs = _binary([0.75, 0.75, 0.55, 0.95])
  labels = np.array([1, 0, 1, 1])
  assert calibration.expected_calibration_error(probs, labels, num_bins=10) == pytest.approx(0.25)
  bins = calibration.reliability_bins(probs, labels, num_bins=10)
  np.testing.assert_array_equal(bins.count_M, [0, 0, 0, 0, 0, 1, 0, 2, 0, 1])
  assert bins.accuracy_M[7] == 0.5 and bins.confidence_M[7] == pytest.approx(0.75)
  # One bin for all: |3/4 right - mean confidence 0.75| = 0.
  assert calibration.expected_calibration_error(probs, labels, num_bins=1) == pytest.approx(0.0)


def test_ece_is_top_label_for_several_classes():
  probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.25, 0.35, 0.4]])
  labels = np.array([0, 1, 2])  # right at 0.6, wrong at 0.7, right at 0.4
  expected = (abs(1 - 0.6) + abs(0 - 0.7) + abs(1 - 0.4)) / 3
  assert calibration.expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_probabilities_must_be_rows_summing_to_one():
  with pytest.raises(ValueError, match="sum to 1"):
    calibration.expected_calibration_error(np.array([[2.0, 1.0]]), np.array([0]))
  with pytest.raises(ValueError, match=r"np.stack\(\[1 - p, p\]"):
    calibration.expected_calibration_error(np.array([0.2, 0.9]), np.array([0, 1]))


def _overconfident(n: int, scale: float, seed: int):
  """Labels drawn from softmax(z); the model reports scale * z (over-confident for scale > 1)."""
  rng = np.random.default_rng(seed)
  z_NxC = rng.normal(size=(n, 3))
  labels_N = np.array([rng.choice(3, p=p) for p in calibration.softmax(z_NxC)])
  return scale * z_NxC, labels_N


def test_temperature_scaling_lowers_nll_on_validation_and_test():
  val_logits, val_labels = _overconfident(2000, scale=4.0, seed=0)
  test_logits, test_labels = _overconfident(2000, scale=4.0, seed=1)
  temperature = calibration.fit_temperature(val_logits, val_labels)
  assert temperature == pytest.approx(4.0, rel=0.15)  # recovers the over-confidence
  for logits, labels in ((val_logits, val_labels), (test_logits, test_labels)):
    before = calibration.negative_log_likelihood(logits, labels)
    after = calibration.negative_log_likelihood(logits, labels, temperature)
    assert after < before - 0.1
    ece_before = calibration.expected_calibration_error(calibration.softmax(logits), labels)
    ece_after = calibration.expected_calibration_error(
      calibration.softmax(logits, temperature), labels
    )
    assert ece_after < ece_before / 2
  # The fitted T is the NLL's minimum: nudging it either way is worse.
  for nudged in (temperature * 0.9, temperature * 1.1):
    assert calibration.negative_log_likelihood(
      val_logits, val_labels, nudged
    ) > calibration.negative_log_likelihood(val_logits, val_labels, temperature)


def test_binary_scores_positive_class():
  probs, labels = _binary([0.9, 0.8, 0.3, 0.6, 0.2]), np.array([1, 1, 0, 0, 0])
  ones, zeros = (calibration.binary_scores(probs, labels, positive=p) for p in (1, 0))
  assert ones["roc_auc"] == zeros["roc_auc"] == 1.0  # a perfect ranking either way round
  assert ones["accuracy"] == 0.8  # 0.6 is called positive, wrongly
  assert ones["brier"] == pytest.approx(np.mean(np.square([0.1, 0.2, 0.3, 0.6, 0.2])))
  assert ones["pr_auc"] == 1.0 and zeros["pr_auc"] == 1.0


def test_reliability_diagram_writes_png(tmp_path):
  logits, labels = _overconfident(200, scale=3.0, seed=0)
  path = calibration.reliability_diagram(
    {"raw": calibration.softmax(logits), "T=3": calibration.softmax(logits, 3.0)},
    labels,
    str(tmp_path / "reliability.png"),
    title="synthetic",
  )
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
