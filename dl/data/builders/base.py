"""What the local TFDS builders share: metadata from class attributes, examples from rows.

A builder subclasses `Builder`, states its own metadata as class attributes and its
features in `_features`; `_info` is written once here. A builder whose examples are rows of
arrays yields them with `Builder._generate_examples` over the seeded train/test split of
`dl.data.builders.train_test_indices` (see `row_splits`).
"""

import types
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A local builder: its `_info` is read from the class attributes below and `_features`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION: str
  HOMEPAGE: str | None = None
  CITATION: str | None = None
  SUPERVISED_KEYS: tuple[str, str] | None = None
  DISABLE_SHUFFLING = False  # True keeps records in generation order (time, text, seed).
  HAS_METADATA = False  # True gives the info a MetadataDict that preparing fills.

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The features of one example, by name."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata."""
    return self.dataset_info_from_configs(
      description=self.DESCRIPTION,
      features=tfds.features.FeaturesDict(self._features()),
      supervised_keys=self.SUPERVISED_KEYS,
      homepage=self.HOMEPAGE,
      citation=self.CITATION,
      disable_shuffling=self.DISABLE_SHUFFLING,
      metadata=tfds.core.MetadataDict() if self.HAS_METADATA else None,
    )

  def row_splits(
    self, columns: Mapping[str, np.ndarray], splits: Mapping[str, np.ndarray] | None = None
  ) -> dict[str, Iterator[tuple[int, dict[str, np.ndarray]]]]:
    """{split: examples of its rows}; `splits` defaults to the seeded 80/20 train/test split.

    Args:
      columns: feature name -> array whose row i is that feature of example i (N, ...).
      splits: split name -> the row indices it holds; None means
        `builders.train_test_indices(N)`.

    Returns:
      split name -> the generator of (row index, example) for its rows, in order.
    """
    if splits is None:
      splits = builders.train_test_indices(len(next(iter(columns.values()))))
    return {split: self._generate_examples(columns, rows) for split, rows in splits.items()}

  def _generate_examples(
    self, columns: Mapping[str, np.ndarray], rows: np.ndarray
  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yields (row index, {feature: its column's row}) for the given rows."""
    for i in rows:
      yield int(i), {key: column[i] for key, column in columns.items()}


class DigitImages(Builder, skip_registration=True):
  """Handwritten digits: a grey-scale uint8 `image` (IMAGE_SIZE, IMAGE_SIZE, 1), its `label`."""

  SUPERVISED_KEYS = ("image", "label")
  IMAGE_SIZE: int

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The image and its digit."""
    size = self.IMAGE_SIZE
    return {
      "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
      "label": tfds.features.ClassLabel(num_classes=10),
    }


class SklearnTable(Builder, skip_registration=True):
  """A table of `sklearn.datasets`: float32 `features` (NUM_FEATURES,) and a `label`, 80/20."""

  SUPERVISED_KEYS = ("features", "label")
  NUM_FEATURES: int

  def _label(self) -> tfds.features.FeatureConnector:
    """The feature of the label column."""
    raise NotImplementedError

  def _read(self, datasets: types.ModuleType) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, NUM_FEATURES), labels (N,)) from the module `sklearn.datasets`."""
    raise NotImplementedError

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The raw float32 features and the label."""
    return {
      "features": tfds.features.Tensor(shape=(self.NUM_FEATURES,), dtype=np.float32),
      "label": self._label(),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # The data ships inside scikit-learn.
    features, labels = self._read(builders.import_sklearn_datasets(self.name))
    return self.row_splits({"features": features.astype(np.float32), "label": labels})
