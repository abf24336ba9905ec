"""The `breast_cancer` data set: Wisconsin diagnostic breast cancer, offline.

569 patients x 30 real-valued features computed from digitised images of fine
needle aspirates of breast masses, read from
`sklearn.datasets.load_breast_cancer`. Labels: 0 = malignant, 1 = benign.
Features are stored raw (float32, not standardised).

Splits: a permutation of the rows with seed 0, then the first 20% (rounded up)
is `test`: 455 train / 114 test. Example keys are the original row indices.
"""

import types

import numpy as np
import tensorflow_datasets as tfds

from dl.data.builders import base


class BreastCancer(base.SklearnTable):
  """Wisconsin diagnostic breast cancer features, with a fixed train/test split."""

  DESCRIPTION = """
Breast Cancer Wisconsin (Diagnostic): 30 features (mean, standard error and
worst value of ten cell-nucleus measurements) per fine needle aspirate, with
the diagnosis malignant (212) or benign (357), as shipped by scikit-learn.
Split with a fixed seed: 455 train / 114 test examples.
"""
  CITATION = """
@article{street1993nuclear,
  author = {Street, W. N. and Wolberg, W. H. and Mangasarian, O. L.},
  title = {Nuclear feature extraction for breast tumor diagnosis},
  journal = {Biomedical Image Processing and Biomedical Visualization},
  series = {Proc. SPIE},
  volume = {1905},
  pages = {861--870},
  year = {1993},
  doi = {10.1117/12.148698}
}
"""
  HOMEPAGE = "https://archive.ics.uci.edu/dataset/17/breast+cancer+wisconsin+diagnostic"
  NUM_FEATURES = 30

  def _label(self) -> tfds.features.FeatureConnector:
    """The diagnosis."""
    return tfds.features.ClassLabel(names=["malignant", "benign"])

  def _read(self, datasets: types.ModuleType) -> tuple[np.ndarray, np.ndarray]:
    """(features, diagnoses) of `load_breast_cancer`."""
    data = datasets.load_breast_cancer()
    return data.data, data.target
