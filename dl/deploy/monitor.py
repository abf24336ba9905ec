"""Drift checks: incoming batches compared with reference statistics saved at export.

Every monitored feature (a column of a tabular model's inputs, or one dimension of a model's
embeddings for images and text) is compared with its reference two ways: the population
stability index (PSI) over the reference's decile bins, and the two-sample
Kolmogorov-Smirnov test against a stored sample of the reference. A feature drifts when its
shift is both large (PSI above `Thresholds.psi`) and significant (KS p-value below
`Thresholds.ks_pvalue` divided by the number of features, a Bonferroni correction); a batch
drifts when more than `Thresholds.max_drifted_fraction` of its features drift.

Embeddings are also compared as whole vectors: the maximum mean discrepancy (MMD, Gaussian
kernel, bandwidth the reference's median pairwise distance) between the batch and the
reference sample, with a permutation-test p-value; an embedding batch drifts when that
p-value is below `Thresholds.mmd_pvalue`, or by the per-feature rule above.

Both per-feature tests depend on the order of values alone: the bins are the reference's
quantiles and KS compares empirical CDFs. An increasing map of a feature (such as the
standardisation of `dl.data.transforms.Preprocess`) moves the bin edges with the values and
leaves the PSI and the KS statistic as they were, so exports (`dl.deploy.export`) monitor tabular
models on their preprocessed inputs and need no raw training data.
"""

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

KINDS = ("features", "embeddings")
_EPS = 1e-4  # Floor of bin proportions, so an empty bin gives a finite PSI.


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """When a drift check flags a batch; set them to your tolerance.

  Attributes:
    psi: a feature's PSI above this is a large shift (0.1: moderate, 0.25: major, by the
      usual rule of thumb).
    ks_pvalue: family-wise significance level of the KS tests (Bonferroni over features).
    max_drifted_fraction: the batch drifts when more than this fraction of features drift
      (0: any one feature).
    mmd_pvalue: embeddings: the batch drifts when the MMD permutation p-value is below this.
  """

  psi: float = 0.2
  ks_pvalue: float = 0.01
  max_drifted_fraction: float = 0.0
  mmd_pvalue: float = 0.01


@dataclasses.dataclass(frozen=True)
class Reference:
  """Reference statistics of F features.

  Attributes:
    kind: "features" (tabular columns, e.g. a model's preprocessed inputs) or "embeddings"
      (a model's features).
    names: one name per feature.
    edges_FxE: interior bin edges per feature (reference deciles), padded with +inf.
    proportions_FxB: the reference's share of examples in each bin (B = E + 1).
    sample_NxF: up to `sample_size` reference rows, for the KS and MMD tests.
    bandwidth: the MMD kernel's length scale (median pairwise distance in the sample).
  """

  kind: str
  names: tuple[str, ...]
  edges_FxE: np.ndarray
  proportions_FxB: np.ndarray
  sample_NxF: np.ndarray
  bandwidth: float

  def save(self, path: str) -> None:
    """Writes the reference to an `.npz` file."""
    np.savez(
      path,
      kind=np.array(self.kind),
      names=np.array(json.dumps(list(self.names))),
      edges_FxE=self.edges_FxE,
      proportions_FxB=self.proportions_FxB,
      sample_NxF=self.sample_NxF,
      bandwidth=np.array(self.bandwidth),
    )

  @classmethod
  def load(cls, path: str) -> "Reference":
    """Reads a reference written by `save`."""
    with np.load(path, allow_pickle=False) as f:
      return cls(
        kind=str(f["kind"]),
        names=tuple(json.loads(str(f["names"]))),
        edges_FxE=f["edges_FxE"],
        proportions_FxB=f["proportions_FxB"],
        sample_NxF=f["sample_NxF"],
        bandwidth=float(f["bandwidth"]),
      )


@dataclasses.dataclass(frozen=True)
class DriftReport:
  """The result of `check`: per-feature statistics and the verdict.

  Attributes:
    drifted: whether the batch drifted by `thresholds`.
    kind: the reference's kind ("features" or "embeddings").
    num_examples: rows in the checked batch.
    names: feature names.
    psi_F: PSI of each feature.
    ks_statistic_F: KS statistic (largest gap between the two CDFs) of each feature.
    ks_pvalue_F: KS p-value of each feature.
    mmd: embeddings: MMD^2 between the batch and the reference sample (nan for features).
    mmd_pvalue: its permutation-test p-value (nan for features).
    drifted_features: names of the features that drifted.
    thresholds: the thresholds applied.
  """

  drifted: bool
  kind: str
  num_examples: int
  names: tuple[str, ...]
  psi_F: np.ndarray
  ks_statistic_F: np.ndarray
  ks_pvalue_F: np.ndarray
  mmd: float
  mmd_pvalue: float
  drifted_features: tuple[str, ...]
  thresholds: Thresholds

  def to_dict(self) -> dict:
    """A JSON-ready summary (the five largest shifts by PSI)."""
    top = np.argsort(-self.psi_F)[:5]
    return {
      "drifted": self.drifted,
      "kind": self.kind,
      "num_examples": self.num_examples,
      "num_features": len(self.names),
      "drifted_features": list(self.drifted_features),
      "max_psi": float(self.psi_F.max()),
      "min_ks_pvalue": float(self.ks_pvalue_F.min()),
      "mmd": None if np.isnan(self.mmd) else self.mmd,
      "mmd_pvalue": None if np.isnan(self.mmd_pvalue) else self.mmd_pvalue,
      "largest_shifts": [
        {
          "feature": self.names[i],
          "psi": float(self.psi_F[i]),
          "ks_statistic": float(self.ks_statistic_F[i]),
          "ks_pvalue": float(self.ks_pvalue_F[i]),
        }
        for i in top
      ],
      "thresholds": dataclasses.asdict(self.thresholds),
    }

  def __str__(self) -> str:
    d = self.to_dict()
    verdict = "DRIFT" if self.drifted else "no drift"
    lines = [
      (
        f"{verdict}: {len(self.drifted_features)} of {len(self.names)} {self.kind} drifted "
        f"({self.num_examples} examples; psi > {self.thresholds.psi} and KS p < "
        f"{self.thresholds.ks_pvalue} / {len(self.names)})"
      ),
      *(
        [f"  embedding MMD^2 {self.mmd:.4f}, permutation p-value {self.mmd_pvalue:.3g}"]
        if not np.isnan(self.mmd)
        else []
      ),
      f"  {'feature':<16} {'psi':>8} {'ks':>8} {'p-value':>10}",
    ]
    for row in d["largest_shifts"]:
      lines.append(
        f"  {row['feature']:<16} {row['psi']:8.3f} {row['ks_statistic']:8.3f} "
        f"{row['ks_pvalue']:10.2e}"
      )
    return "\n".join(lines)


def reference(
  features_NxF: np.ndarray,
  *,
  kind: str = "features",
  names: Sequence[str] | None = None,
  bins: int = 10,
  sample_size: int = 1000,
  seed: int = 0,
) -> Reference:
  """Reference statistics of `features_NxF` (e.g. the training inputs or their embeddings).

  Args:
    features_NxF: (N, F) reference rows; other shapes are flattened to (N, -1).
    kind: "features" or "embeddings", recorded for reports.
    names: F feature names (default "feature_<i>" or "dim_<i>").
    bins: PSI bins per feature, cut at the reference's quantiles.
    sample_size: rows kept for the KS tests (a random subset when N is larger).
    seed: picks that subset.

  Returns:
    The `Reference`.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
  x_NxF = _as_rows(features_NxF, "features_NxF")
  num_features = x_NxF.shape[1]
  prefix = "feature" if kind == "features" else "dim"
  names = tuple(names) if names is not None else tuple(f"{prefix}_{i}" for i in range(num_features))
  if len(names) != num_features:
    raise ValueError(f"expected {num_features} names, one per feature; got {len(names)}.")
  quantiles = np.quantile(x_NxF, np.linspace(0, 1, bins + 1)[1:-1], axis=0).T
  edges_FxE = np.full((num_features, bins - 1), np.inf)
  for f, q in enumerate(quantiles):
    unique = np.unique(q)
    edges_FxE[f, : len(unique)] = unique
  proportions_FxB = _proportions(x_NxF, edges_FxE)
  rng = np.random.default_rng(seed)
  sample_NxF = x_NxF[np.sort(rng.permutation(len(x_NxF))[:sample_size])]
  distances = np.sqrt(_squared_distances(sample_NxF[:500], sample_NxF[:500]))
  bandwidth = float(np.median(distances[distances > 0])) if np.any(distances > 0) else 1.0
  return Reference(kind, names, edges_FxE, proportions_FxB, sample_NxF, bandwidth)


def check(
  ref: Reference, features_NxF: np.ndarray, thresholds: Thresholds | None = None
) -> DriftReport:
  """Compares a batch with the reference, feature by feature.

  Args:
    ref: from `reference` (or `Reference.load`).
    features_NxF: (N, F) incoming rows in the reference's units (same features, same order).
    thresholds: what counts as drift (default `Thresholds()`).

  Returns:
    A `DriftReport`; `report.drifted` is the verdict, `str(report)` a readable table.
  """
  thresholds = thresholds or Thresholds()
  x_NxF = _as_rows(features_NxF, "features_NxF")
  num_features = len(ref.names)
  if x_NxF.shape[1] != num_features:
    raise ValueError(
      f"the reference has {num_features} {ref.kind} per example; got {x_NxF.shape[1]} "
      f"(batch shape {np.shape(features_NxF)})."
    )
  psi_F = psi(ref.proportions_FxB, _proportions(x_NxF, ref.edges_FxE))
  from scipy import stats  # Imported here: scipy.stats adds ~1 s to `import dl`.

  ks = stats.ks_2samp(ref.sample_NxF, x_NxF, axis=0)
  statistic_F = np.nan_to_num(np.asarray(ks.statistic, np.float64))
  pvalue_F = np.nan_to_num(np.asarray(ks.pvalue, np.float64), nan=1.0)
  drifted_F = (psi_F > thresholds.psi) & (pvalue_F < thresholds.ks_pvalue / num_features)
  drifted = bool(drifted_F.mean() > thresholds.max_drifted_fraction)
  mmd2, mmd_pvalue = np.nan, np.nan
  if ref.kind == "embeddings":
    mmd2, mmd_pvalue = mmd_test(ref.sample_NxF, x_NxF, ref.bandwidth)
    drifted = drifted or mmd_pvalue < thresholds.mmd_pvalue
  return DriftReport(
    drifted=drifted,
    kind=ref.kind,
    num_examples=len(x_NxF),
    names=ref.names,
    psi_F=psi_F,
    ks_statistic_F=statistic_F,
    ks_pvalue_F=pvalue_F,
    mmd=float(mmd2),
    mmd_pvalue=float(mmd_pvalue),
    drifted_features=tuple(n for n, d in zip(ref.names, drifted_F) if d),
    thresholds=thresholds,
  )


def psi(expected_FxB: np.ndarray, actual_FxB: np.ndarray) -> np.ndarray:
  """Population stability index per row: sum over bins of (a - e) * ln(a / e)."""
  e = np.maximum(expected_FxB, _EPS)
  a = np.maximum(actual_FxB, _EPS)
  return np.sum((a - e) * np.log(a / e), axis=-1)


def mmd_test(
  x_NxF: np.ndarray, y_MxF: np.ndarray, bandwidth: float, permutations: int = 200, seed: int = 0
) -> tuple[float, float]:
  """MMD^2 (Gaussian kernel, biased estimate) of two samples and its permutation p-value."""
  z = np.concatenate([x_NxF, y_MxF])
  kernel = np.exp(-_squared_distances(z, z) / (2 * bandwidth**2))
  n, m = len(x_NxF), len(y_MxF)
  weights_P1xZ = np.concatenate([np.full(n, 1 / n), np.full(m, -1 / m)])[None]
  rng = np.random.default_rng(seed)
  shuffled_PxZ = np.stack([rng.permutation(weights_P1xZ[0]) for _ in range(permutations)])
  weights_PxZ = np.concatenate([weights_P1xZ, shuffled_PxZ])
  # MMD^2 = w^T K w with w = 1/n on one sample and -1/m on the other; permuting the
  # labels permutes w.
  mmd2_P = ((weights_PxZ @ kernel) * weights_PxZ).sum(axis=1)
  observed = mmd2_P[0]
  return float(observed), float((1 + np.sum(mmd2_P[1:] >= observed)) / (1 + permutations))


def _squared_distances(a_NxF: np.ndarray, b_MxF: np.ndarray) -> np.ndarray:
  d = (a_NxF**2).sum(1)[:, None] + (b_MxF**2).sum(1)[None, :] - 2 * a_NxF @ b_MxF.T
  return np.maximum(d, 0.0)


def _proportions(x_NxF: np.ndarray, edges_FxE: np.ndarray) -> np.ndarray:
  """Share of rows in each bin, per feature: (F, E + 1)."""
  num_bins = edges_FxE.shape[1] + 1
  counts = [
    np.bincount(np.searchsorted(edges, column, side="right"), minlength=num_bins)
    for edges, column in zip(edges_FxE, x_NxF.T)
  ]
  return np.stack(counts) / len(x_NxF)


def _as_rows(x, name: str) -> np.ndarray:
  """(N, ...) -> (N, F) float64, with N >= 1."""
  x = np.asarray(x, np.float64)
  if x.ndim < 1 or len(x) == 0:
    raise ValueError(f"{name} must be a non-empty batch (N, ...); got shape {x.shape}.")
  return x.reshape(len(x), -1)
