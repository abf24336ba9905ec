# The names `import dl.data` gives, each loaded on first use: lazy_loader reads this stub at
# import (dl/data/__init__.py), type checkers and the API reference read it as the interface.
from . import (
  augment,
  batches,
  builders,
  checks,
  errors,
  espeak,
  integrity,
  loading,
  sources,
  streaming,
  text,
  transforms,
)
from .builders import LOCAL_DATASETS
from .errors import (
  DamagedDatasetError,
  DataPackageMissingError,
  DatasetDownloadError,
  DatasetError,
  UnknownDatasetError,
  UnknownSplitError,
)
from .loading import DatasetSpec, info, load

# What the API reference lists (lazy_loader derives the same list from the imports above;
# tests/imports_test.py checks that the two agree).
__all__ = [
  "DamagedDatasetError",
  "DataPackageMissingError",
  "DatasetDownloadError",
  "DatasetError",
  "DatasetSpec",
  "LOCAL_DATASETS",
  "UnknownDatasetError",
  "UnknownSplitError",
  "augment",
  "batches",
  "builders",
  "checks",
  "errors",
  "espeak",
  "info",
  "integrity",
  "load",
  "loading",
  "sources",
  "streaming",
  "text",
  "transforms",
]
