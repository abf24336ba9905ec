"""The `diabetes` data set: disease progression one year after baseline, offline (regression).

442 patients x 10 baseline variables (age, sex, body mass index, average blood pressure and
six blood serum measurements), read from `sklearn.datasets.load_diabetes(scaled=False)`.
The label is a float: a quantitative measure of disease progression one year later
(25 to 346). Features are stored raw (float32, not standardised).

Splits: a permutation of the rows with seed 0, then the first 20% (rounded up) is `test`:
353 train / 89 test. Example keys are the original row indices.
"""

import types

import numpy as np
import tensorflow_datasets as tfds

from dl.data.builders import base


class Diabetes(base.SklearnTable):
  """Diabetes progression regression, with a fixed train/test split."""

  DESCRIPTION = """
Diabetes (Efron et al., 2004): ten baseline variables of 442 diabetes patients and a
quantitative measure of disease progression one year after baseline, as shipped by
scikit-learn. Split with a fixed seed: 353 train / 89 test examples.
"""
  CITATION = """
@article{efron2004least,
  author = {Efron, Bradley and Hastie, Trevor and Johnstone, Iain and Tibshirani, Robert},
  title = {Least angle regression},
  journal = {The Annals of Statistics},
  volume = {32},
  number = {2},
  pages = {407--499},
  year = {2004},
  doi = {10.1214/009053604000000067}
}
"""
  HOMEPAGE = "https://www4.stat.ncsu.edu/~boos/var.select/diabetes.html"
  NUM_FEATURES = 10

  def _label(self) -> tfds.features.FeatureConnector:
    """The progression, a float."""
    return tfds.features.Tensor(shape=(), dtype=np.float32)

  def _read(self, datasets: types.ModuleType) -> tuple[np.ndarray, np.ndarray]:
    """(baseline variables, progressions) of `load_diabetes`, unscaled."""
    data = datasets.load_diabetes(scaled=False)
    return data.data, data.target.astype(np.float32)
