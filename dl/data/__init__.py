"""Data for dl: TFDS data sets (local and catalog) loaded into numpy arrays.

`dl.data.load("digits", "train")` and `dl.data.info(...)` take a local data set
(`LOCAL_DATASETS`, built offline by `dl.data.builders`) or a TFDS catalog name. Importing
this package loads nothing: each name below, and each module of the package, is imported on
first use (`__init__.pyi` lists them). A local builder is imported, and so registered with
TFDS, only when its data set is named through dl (`load`, `info`, `loading.data_source`,
`loading.prepared_builder`); `tfds.builder("digits")` alone does not find it.

Imports nothing of dl but dl.core.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
