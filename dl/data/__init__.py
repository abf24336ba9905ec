"""Data for dl: TFDS data sets (local and catalog) loaded into numpy arrays.

Importing this package imports the local builders of `dl.data.builders` (`digits`,
`mnist5k`, `breast_cancer`, `diabetes`, ...), which registers them with TFDS, so
`tfds.builder("digits")` works too. `LOCAL_DATASETS` lists them.
"""

from dl.data.builders import local_datasets
from dl.data.loading import (
  DamagedDatasetError,
  DataPackageMissingError,
  DatasetDownloadError,
  DatasetError,
  DatasetSpec,
  UnknownDatasetError,
  UnknownSplitError,
  info,
  load,
)

LOCAL_DATASETS = local_datasets()

__all__ = [
  "LOCAL_DATASETS",
  "DamagedDatasetError",
  "DataPackageMissingError",
  "DatasetDownloadError",
  "DatasetError",
  "DatasetSpec",
  "UnknownDatasetError",
  "UnknownSplitError",
  "info",
  "load",
]
