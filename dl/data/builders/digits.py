"""The `digits` data set: scikit-learn's 8x8 handwritten digits, offline.

1,797 grey-scale 8x8 images of the digits 0-9 (UCI "Optical Recognition of
Handwritten Digits", test part), read from `sklearn.datasets.load_digits`.
Pixel counts 0..16 are rescaled to 0..255 as round(v * 255 / 16).

Splits: a permutation of the rows with seed 0, then the first 20% (rounded up)
is `test`: 1,437 train / 360 test. Example keys are the original row indices.
"""

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders
from dl.data.builders import base

_MAX_COUNT = 16


class Digits(base.DigitImages):
  """scikit-learn's 8x8 digits as uint8 images, with a fixed train/test split."""

  DESCRIPTION = """
Handwritten digits 0-9 as 8x8 grey-scale images (UCI Optical Recognition of
Handwritten Digits, as shipped by scikit-learn). Each pixel counted 0..16 set
bits of a 4x4 block of a 32x32 bitmap; here it is rescaled to 0..255 uint8.
Split with a fixed seed: 1,437 train / 360 test examples.
"""
  CITATION = """
@misc{alpaydin1998optical,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}
"""
  HOMEPAGE = "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"
  IMAGE_SIZE = 8

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # The data ships inside scikit-learn.
    digits = builders.import_sklearn_datasets(self.name).load_digits()
    images = _to_uint8(digits.images)[..., np.newaxis]
    return self.row_splits({"image": images, "label": digits.target})


def _to_uint8(counts: np.ndarray) -> np.ndarray:
  """Rescales pixel counts 0..16 to 0..255 uint8."""
  return np.round(counts * 255 / _MAX_COUNT).astype(np.uint8)
