"""Calibrated probabilities: expected calibration error, reliability diagrams, temperature scaling.

A classifier is calibrated when, of the examples it gives confidence p, a fraction p is right.
`expected_calibration_error` measures the gap over equal-width confidence bins (Guo et al.,
"On Calibration of Modern Neural Networks", 2017); `fit_temperature` learns the one scalar T
that divides the logits to minimise the negative log-likelihood on held-out data (fit it on a
validation split, never on the test split); `reliability_diagram` draws accuracy against
confidence per bin. Scores that scikit-learn provides (ROC-AUC, PR-AUC, Brier, log loss) come
from `sklearn.metrics` through `binary_scores`.

  T = dl.trust.calibration.fit_temperature(val_logits_NxC, val_labels_N)
  probs_NxC = dl.trust.calibration.softmax(test_logits_NxC, T)
  ece = dl.trust.calibration.expected_calibration_error(probs_NxC, test_labels_N)
"""

import dataclasses
import warnings
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

# log T is searched in [log 1e-2, log 1e2]: wide enough for any network seen in practice.
_LOG_T_BOUNDS = (-4.6, 4.6)


@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
  """Per-bin statistics of top-label confidence, over `num_bins` equal-width bins of [0, 1].

  Attributes:
    edges_M1: (M + 1,) bin edges, 0 to 1.
    confidence_M: (M,) mean confidence of the examples in each bin (nan where empty).
    accuracy_M: (M,) fraction of them predicted right (nan where empty).
    count_M: (M,) number of examples in each bin.
  """

  edges_M1: np.ndarray
  confidence_M: np.ndarray
  accuracy_M: np.ndarray
  count_M: np.ndarray


def _check(probs_NxC: np.ndarray, labels_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  probs_NxC, labels_N = np.asarray(probs_NxC, np.float64), np.asarray(labels_N)
  if probs_NxC.ndim != 2 or labels_N.shape != probs_NxC.shape[:1]:
    raise ValueError(
      f"expected probabilities (N, C) and labels (N,); got shapes {probs_NxC.shape} and "
      f"{labels_N.shape}. For a binary score p(positive) of shape (N,), pass "
      "np.stack([1 - p, p], axis=1)."
    )
  sums_N = probs_NxC.sum(axis=1, keepdims=True)
  if not np.allclose(sums_N, 1.0, atol=1e-4):
    raise ValueError("each row of probabilities must sum to 1; apply a softmax to logits first.")
  return probs_NxC / sums_N, labels_N  # float32 softmax rows are off by ~1e-7


def reliability_bins(
  probs_NxC: np.ndarray, labels_N: np.ndarray, num_bins: int = 10
) -> ReliabilityBins:
  """Bins examples by top-label confidence; bin m holds confidences in (m/M, (m+1)/M].

  Args:
    probs_NxC: predicted class probabilities (rows sum to 1).
    labels_N: integer class labels.
    num_bins: M, the number of equal-width bins.

  Returns:
    The `ReliabilityBins`.
  """
  probs_NxC, labels_N = _check(probs_NxC, labels_N)
  confidence_N = probs_NxC.max(axis=1)
  correct_N = (probs_NxC.argmax(axis=1) == labels_N).astype(np.float64)
  edges_M1 = np.linspace(0.0, 1.0, num_bins + 1)
  # Edges, not confidence * M: 0.6 * 10 rounds to 6.000000000000001, past the edge.
  bin_N = np.searchsorted(edges_M1[1:-1], confidence_N, side="left")
  count_M = np.bincount(bin_N, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    confidence_M = np.bincount(bin_N, confidence_N, num_bins) / count_M
    accuracy_M = np.bincount(bin_N, correct_N, num_bins) / count_M
  return ReliabilityBins(edges_M1, confidence_M, accuracy_M, count_M)


def expected_calibration_error(
  probs_NxC: np.ndarray, labels_N: np.ndarray, num_bins: int = 10
) -> float:
  """ECE: sum over bins of |accuracy - confidence|, weighted by the bin's share of examples.

  Args:
    probs_NxC: predicted class probabilities (rows sum to 1).
    labels_N: integer class labels.
    num_bins: number of equal-width confidence bins.

  Returns:
    The expected calibration error, in [0, 1].
  """
  bins = reliability_bins(probs_NxC, labels_N, num_bins)
  filled = bins.count_M > 0
  gaps = np.abs(bins.accuracy_M[filled] - bins.confidence_M[filled])
  return float(np.sum(gaps * bins.count_M[filled]) / np.sum(bins.count_M))


def softmax(logits_NxC: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """Probabilities (N, C) of logits divided by `temperature`."""
  import scipy.special  # pylint: disable=import-outside-toplevel  # (slow: imported when used)

  return scipy.special.softmax(np.asarray(logits_NxC, np.float64) / temperature, axis=1)


def negative_log_likelihood(
  logits_NxC: np.ndarray, labels_N: np.ndarray, temperature: float = 1.0
) -> float:
  """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
  import scipy.special  # pylint: disable=import-outside-toplevel

  log_probs_NxC = scipy.special.log_softmax(np.asarray(logits_NxC, np.float64) / temperature, 1)
  return float(-np.mean(log_probs_NxC[np.arange(len(labels_N)), labels_N]))


def fit_temperature(logits_NxC: np.ndarray, labels_N: np.ndarray) -> float:
  """The temperature T > 0 minimising the NLL of softmax(logits / T): temperature scaling.

  Fit it on a validation split; it never changes the predicted class (nor ROC-AUC), only
  how confident the probabilities are. The NLL is convex in 1/T, so a bounded scalar search
  over log T finds the minimum.

  Args:
    logits_NxC: the model's logits (or log-probabilities) on validation data.
    labels_N: integer class labels of that data.

  Returns:
    T (> 1 softens over-confident probabilities, < 1 sharpens under-confident ones), in
    [0.01, 100]; a warning says when it sits at a bound (no finite minimum).
  """
  import scipy.optimize  # pylint: disable=import-outside-toplevel

  logits_NxC, labels_N = np.asarray(logits_NxC, np.float64), np.asarray(labels_N)
  if logits_NxC.ndim != 2 or labels_N.shape != logits_NxC.shape[:1]:
    raise ValueError(
      f"expected logits (N, C) and labels (N,); got shapes {logits_NxC.shape} and {labels_N.shape}."
    )
  result = scipy.optimize.minimize_scalar(
    lambda log_t: negative_log_likelihood(logits_NxC, labels_N, np.exp(log_t)),
    bounds=_LOG_T_BOUNDS,
    method="bounded",
    options={"xatol": 1e-6},
  )
  if min(abs(result.x - bound) for bound in _LOG_T_BOUNDS) < 1e-3:
    warnings.warn(
      f"fit_temperature: the NLL-minimising temperature lies at the search bound "
      f"T={np.exp(result.x):.3g}. Temperature scaling is ill-posed here: e.g. the logits "
      "separate the validation labels perfectly, so the NLL keeps falling as T -> 0. Use "
      "more (or harder) validation data.",
      stacklevel=2,
    )
  return float(np.exp(result.x))


def binary_scores(
  probs_Nx2: np.ndarray, labels_N: np.ndarray, *, positive: int = 1, num_bins: int = 10
) -> dict[str, float]:
  """Accuracy, ranking and calibration scores of a two-class classifier.

  Args:
    probs_Nx2: predicted probabilities of classes 0 and 1.
    labels_N: labels in {0, 1}.
    positive: the class whose probability ranks examples for ROC-AUC and PR-AUC (e.g. the
      class "default" or "malignant"); PR-AUC depends on this choice, the others do not.
    num_bins: bins of the ECE.

  Returns:
    {"accuracy", "roc_auc", "pr_auc" (average precision), "brier", "nll", "ece"}.
  """
  from sklearn import metrics  # pylint: disable=import-outside-toplevel  # (3 s to import)

  probs_Nx2, labels_N = _check(probs_Nx2, labels_N)
  if probs_Nx2.shape[1] != 2:
    raise ValueError(f"binary_scores needs probabilities of 2 classes; got {probs_Nx2.shape[1]}.")
  is_positive_N, score_N = labels_N == positive, probs_Nx2[:, positive]
  return {
    "accuracy": float(np.mean(probs_Nx2.argmax(axis=1) == labels_N)),
    "roc_auc": float(metrics.roc_auc_score(is_positive_N, score_N)),
    "pr_auc": float(metrics.average_precision_score(is_positive_N, score_N)),
    "brier": float(metrics.brier_score_loss(is_positive_N, score_N)),
    "nll": float(metrics.log_loss(labels_N, probs_Nx2, labels=[0, 1])),
    "ece": expected_calibration_error(probs_Nx2, labels_N, num_bins),
  }


def reliability_diagram(
  probs: Mapping[str, np.ndarray],
  labels_N: np.ndarray,
  path: str,
  *,
  num_bins: int = 10,
  title: str = "",
) -> str:
  """Saves a reliability diagram (accuracy against confidence per bin) as a PNG.

  Args:
    probs: curve name -> probabilities (N, C) of the same examples, e.g.
      {"MLP": p, "MLP + temperature": q}; each curve's legend shows its ECE.
    labels_N: integer class labels of those examples.
    path: where the PNG goes.
    num_bins: equal-width confidence bins.
    title: the figure's title.

  Returns:
    `path`.
  """
  fig = Figure(figsize=(9, 4.2))  # A bare Figure: headless, leaves pyplot's backend alone.
  curve_ax, count_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": (3, 2)})
  curve_ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
  width = 1.0 / num_bins / (len(probs) + 1)
  for i, (name, probs_NxC) in enumerate(probs.items()):
    bins = reliability_bins(probs_NxC, labels_N, num_bins)
    ece = expected_calibration_error(probs_NxC, labels_N, num_bins)
    filled = bins.count_M > 0
    curve_ax.plot(
      bins.confidence_M[filled], bins.accuracy_M[filled], "o-", label=f"{name} (ECE {ece:.3f})"
    )
    count_ax.bar(bins.edges_M1[:-1] + (i + 0.5) * width, bins.count_M, width, label=name)
  curve_ax.set(xlabel="confidence (top-label probability)", ylabel="accuracy", xlim=(0, 1))
  curve_ax.set_ylim(0, 1.02)
  curve_ax.grid(alpha=0.3)
  curve_ax.legend(fontsize=8, loc="upper left")
  count_ax.set(xlabel="confidence", ylabel="examples per bin", xlim=(0, 1))
  count_ax.set_yscale("log")
  count_ax.legend(fontsize=8, loc="upper left")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
