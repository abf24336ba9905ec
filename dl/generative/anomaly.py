"""Scoring an anomaly detector: ROC-AUC and PR-AUC (scikit-learn) of scores against truth."""

import numpy as np
import sklearn.metrics


def detection_metrics(scores_N: np.ndarray, is_anomaly_N: np.ndarray) -> dict[str, float]:
  """How well higher scores single out the anomalies.

  Args:
    scores_N: anomaly scores, higher = more anomalous (e.g. reconstruction errors).
    is_anomaly_N: 1 for anomalies (the positives), 0 for normal records.

  Returns:
    {"roc_auc", "pr_auc" (average precision), "positive_rate"}; PR-AUC's chance level is
    the positive rate, ROC-AUC's is 0.5.
  """
  scores_N, is_anomaly_N = np.asarray(scores_N), np.asarray(is_anomaly_N)
  if scores_N.shape != is_anomaly_N.shape or scores_N.ndim != 1:
    raise ValueError(
      f"scores and labels must be (N,) of one length; got {scores_N.shape} and "
      f"{is_anomaly_N.shape}."
    )
  if len(np.unique(is_anomaly_N)) != 2:
    raise ValueError("is_anomaly_N must hold both anomalies (1) and normal records (0).")
  return {
    "roc_auc": float(sklearn.metrics.roc_auc_score(is_anomaly_N, scores_N)),
    "pr_auc": float(sklearn.metrics.average_precision_score(is_anomaly_N, scores_N)),
    "positive_rate": float(np.mean(is_anomaly_N)),
  }
