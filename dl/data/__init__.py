"""Data for dl: TFDS data sets (local and catalog) loaded into numpy arrays.

Importing this package registers the local builders (`digits`, `mnist5k`,
`breast_cancer`, `diabetes`, ...) with TFDS, so `tfds.builder("digits")` works too.
"""

# Defining a builder class registers it with TFDS: import them for that effect.
from dl.data.builders import breast_cancer as _breast_cancer  # noqa: F401
from dl.data.builders import credit as _credit  # noqa: F401
from dl.data.builders import diabetes as _diabetes  # noqa: F401
from dl.data.builders import digits as _digits  # noqa: F401
from dl.data.builders import mnist5k as _mnist5k  # noqa: F401
from dl.data.builders import movielens_100k as _movielens_100k  # noqa: F401
from dl.data.builders import pydoc_text as _pydoc_text  # noqa: F401
from dl.data.builders import rotten_tomatoes as _rotten_tomatoes  # noqa: F401
from dl.data.builders import series as _series  # noqa: F401
from dl.data.builders import sp500 as _sp500  # noqa: F401
from dl.data.builders import synthetic_digit_boxes as _synthetic_digit_boxes  # noqa: F401
from dl.data.loading import (
  LOCAL_DATASETS,
  DataPackageMissingError,
  DatasetDownloadError,
  DatasetError,
  DatasetSpec,
  UnknownDatasetError,
  UnknownSplitError,
  info,
  load,
)

__all__ = [
  "LOCAL_DATASETS",
  "DataPackageMissingError",
  "DatasetDownloadError",
  "DatasetError",
  "DatasetSpec",
  "UnknownDatasetError",
  "UnknownSplitError",
  "info",
  "load",
]
