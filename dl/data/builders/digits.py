"""The `digits` data set: scikit-learn's 8x8 handwritten digits, offline.

1,797 grey-scale 8x8 images of the digits 0-9 (UCI "Optical Recognition of
Handwritten Digits", test part), read from `sklearn.datasets.load_digits`.
Pixel counts 0..16 are rescaled to 0..255 as round(v * 255 / 16).

Splits: a permutation of the rows with seed 0, then the first 20% (rounded up)
is `test`: 1,437 train / 360 test. Example keys are the original row indices.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders

_DESCRIPTION = """
Handwritten digits 0-9 as 8x8 grey-scale images (UCI Optical Recognition of
Handwritten Digits, as shipped by scikit-learn). Each pixel counted 0..16 set
bits of a 4x4 block of a 32x32 bitmap; here it is rescaled to 0..255 uint8.
Split with a fixed seed: 1,437 train / 360 test examples.
"""

_CITATION = """
@misc{alpaydin1998optical,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}
"""

_HOMEPAGE = "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"
_MAX_COUNT = 16


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits as uint8 images, with a fixed train/test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata."""
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage=_HOMEPAGE,
      citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # The data ships inside scikit-learn.
    datasets = builders.import_sklearn_datasets(self.name)
    digits = datasets.load_digits()
    images = _to_uint8(digits.images)[..., np.newaxis]
    labels = digits.target
    return {
      split: self._generate_examples(images, labels, indices)
      for split, indices in builders.train_test_indices(len(labels)).items()
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    """Yields (row index, example) for the given rows."""
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}


def _to_uint8(counts: np.ndarray) -> np.ndarray:
  """Rescales pixel counts 0..16 to 0..255 uint8."""
  return np.round(counts * 255 / _MAX_COUNT).astype(np.uint8)
