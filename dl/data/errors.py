"""The errors of dl's data sets: each says what is wrong and how to fix it.

They need nothing but Python, so that the builders (`dl.data.builders`) and loading
(`dl.data.loading`) share them without importing each other.
"""


class DatasetError(ValueError):
  """A data set cannot be loaded; the message says how to fix it."""


class UnknownDatasetError(DatasetError):
  """The name is neither a local data set nor a TFDS catalog name."""


class UnknownSplitError(DatasetError):
  """The data set has no such split."""


class DatasetDownloadError(DatasetError):
  """A catalog data set needs a download and the download failed."""


class DataPackageMissingError(DatasetError, ImportError):
  """A local data set reads its data from a package that is not installed."""


class DamagedDatasetError(DatasetError):
  """A prepared data set's files are damaged (truncated, missing, changed); dl cannot mend them."""
