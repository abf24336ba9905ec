"""Application pieces: detection, segmentation, speech, recommendation, forecasting, decoding.

Imports every floor below, recipes included.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
  __name__,
  submodules=["decoding", "detection", "forecasting", "recommend", "segmentation", "speech"],
)
