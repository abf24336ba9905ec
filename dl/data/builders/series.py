"""Time series for one-step-ahead forecasting: `sunspots` and `co2`, offline.

Both come from statsmodels' datasets (`pip install statsmodels==0.15.0`):

- `sunspots`: yearly mean sunspot numbers, 1700-2008 (309 years). Windows of 12 years
  predict the 13th. Splits by year: train 1700-1928, validation 1929-1968, test 1969-2008.
- `co2`: weekly atmospheric CO2 at Mauna Loa (ppm), 1958-03-29 to 2001-12-29 (2,284
  weeks, 59 missing). Windows of 52 weeks predict the next week. Splits by date: train
  to 1993, validation 1994-1997, test 1998-2001.

No leakage, by construction:
- the splits are contiguous time segments, test last, and every window (inputs AND
  target) lies inside one segment: no window crosses a split boundary, so the first
  `window` values of the validation and test segments are context only;
- missing values are filled by linear interpolation inside each segment alone;
- values are standardised with the mean and standard deviation of the train segment
  only; both are stored in the data set's metadata (`builder.info.metadata`, keys "mean",
  "std") so forecasts can be mapped back: value = scaled * std + mean.

Features: `features` (float32, window) the scaled inputs, oldest first; `label` (float32
scalar) the scaled next value; `year` (float32) the target's time in decimal years.
Example keys are the target's position in the full series.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders
from dl.data.builders import base

_INSTALL = "pip install statsmodels==0.15.0"
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Segment:
  """A split's first and last time (decimal years, inclusive) and its windowed arrays."""

  first: float
  last: float
  inputs_WxT: np.ndarray
  targets_W: np.ndarray
  years_W: np.ndarray
  positions_W: np.ndarray


class _WindowedSeries(base.Builder, skip_registration=True):
  """Base of the series builders: a subclass says how to read its series and where to cut."""

  WINDOW: int
  VALIDATION_START: float  # decimal year of the first validation value
  TEST_START: float  # decimal year of the first test value
  SUPERVISED_KEYS = ("features", "label")
  HAS_METADATA = True  # the train mean and std, the window and the years of each split

  def _read(self) -> tuple[np.ndarray, np.ndarray]:
    """(decimal years, values with NaN for missing ones) of the whole series, in time order."""
    raise NotImplementedError

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The window of scaled values, the next one and its time."""
    return {
      "features": tfds.features.Tensor(shape=(self.WINDOW,), dtype=np.float32),
      "label": tfds.features.Tensor(shape=(), dtype=np.float32),
      "year": tfds.features.Tensor(shape=(), dtype=np.float32),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Cuts, fills, scales and windows the series; nothing is downloaded."""
    del dl_manager  # The data ships inside statsmodels.
    years_N, values_N = self._read()
    segments, mean, std = windowed_segments(
      years_N, values_N, self.WINDOW, (self.VALIDATION_START, self.TEST_START)
    )
    self.info.metadata.update(
      {"mean": mean, "std": std, "window": self.WINDOW}
      | {f"{s}_years": [seg.first, seg.last] for s, seg in segments.items()}
    )
    return {split: self._generate_examples(segment) for split, segment in segments.items()}

  def _generate_examples(self, segment: Segment) -> Iterator[tuple[int, dict]]:
    """Yields (target position, example) for each window of the segment."""
    for x_T, y, year, position in zip(
      segment.inputs_WxT, segment.targets_W, segment.years_W, segment.positions_W, strict=True
    ):
      yield int(position), {"features": x_T, "label": y, "year": year}


def windowed_segments(
  years_N: np.ndarray, values_N: np.ndarray, window: int, starts: tuple[float, float]
) -> tuple[dict[str, Segment], float, float]:
  """Splits a series by time into train/validation/test and windows each segment alone.

  Args:
    years_N: decimal years, increasing.
    values_N: the values (NaN where missing).
    window: T, input values per example.
    starts: decimal years where validation and test begin.

  Returns:
    {split: Segment} with scaled float32 arrays, and the train mean and std used to scale.
  """
  if np.any(np.diff(years_N) <= 0):
    raise ValueError("the series' times must increase strictly; sort it first.")
  edges = (-np.inf, *starts, np.inf)
  bounds = [np.searchsorted(years_N, edge) for edge in edges]
  pieces = [_fill(values_N[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
  mean, std = float(np.mean(pieces[0])), float(np.std(pieces[0]))
  segments = {}
  for split, piece, lo in zip(SPLITS, pieces, bounds[:-1], strict=True):
    if len(piece) <= window:
      raise ValueError(f"split '{split}' has {len(piece)} values; a window needs {window + 1}.")
    scaled = ((piece - mean) / std).astype(np.float32)
    inputs_WxT = np.lib.stride_tricks.sliding_window_view(scaled[:-1], window)
    positions_W = lo + np.arange(window, len(piece))
    segments[split] = Segment(
      first=float(years_N[lo]),
      last=float(years_N[lo + len(piece) - 1]),
      inputs_WxT=np.ascontiguousarray(inputs_WxT),
      targets_W=scaled[window:],
      years_W=years_N[positions_W].astype(np.float32),
      positions_W=positions_W,
    )
  return segments, mean, std


def _fill(values: np.ndarray) -> np.ndarray:
  """Missing values linearly interpolated from this piece alone (ends: nearest value)."""
  values = np.asarray(values, np.float64)
  missing = np.isnan(values)
  if missing.all():
    raise ValueError("a split holds no observed value.")
  if missing.any():
    t = np.arange(len(values))
    values = values.copy()
    values[missing] = np.interp(t[missing], t[~missing], values[~missing])
  return values


def read_sunspots(dataset: str = "sunspots") -> tuple[np.ndarray, np.ndarray]:
  """(years, yearly mean sunspot numbers) 1700-2008 from statsmodels."""
  frame = _statsmodels_datasets(dataset).sunspots.load_pandas().data
  return frame["YEAR"].to_numpy(np.float64), frame["SUNACTIVITY"].to_numpy(np.float64)


def read_co2(dataset: str = "co2") -> tuple[np.ndarray, np.ndarray]:
  """(decimal years, weekly CO2 ppm with NaN where missing) 1958-2001 from statsmodels."""
  frame = _statsmodels_datasets(dataset).co2.load_pandas().data
  dates = frame.index
  years = dates.year + (dates.day_of_year - 1) / np.where(dates.is_leap_year, 366.0, 365.0)
  return np.asarray(years, np.float64), frame["co2"].to_numpy(np.float64)


def _statsmodels_datasets(dataset: str):
  """`statsmodels.api.datasets`, or DataPackageMissingError saying how to install it."""
  try:
    from statsmodels import datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise builders.missing_package_error(dataset, "statsmodels", _INSTALL) from e
  return datasets


class Sunspots(_WindowedSeries):
  """Yearly sunspot numbers 1700-2008: 12 years -> the next year."""

  WINDOW = 12
  VALIDATION_START = 1929.0
  TEST_START = 1969.0
  DESCRIPTION = """
Yearly mean total sunspot number 1700-2008 (statsmodels' `sunspots`). Windows of 12 years,
scaled by train statistics, predict the next year. Time-ordered splits: train 1700-1928 (217
windows), validation 1929-1968 (28), test 1969-2008 (28); no window crosses a boundary.
"""
  CITATION = """
@misc{sidc_sunspots,
  author = {{SIDC, Royal Observatory of Belgium}},
  title = {Sunspot Index and Long-term Solar Observations (SILSO)},
  howpublished = {\\url{https://www.sidc.be/SILSO/}}
}
"""
  HOMEPAGE = "https://www.statsmodels.org/stable/datasets/generated/sunspots.html"

  def _read(self) -> tuple[np.ndarray, np.ndarray]:
    return read_sunspots(self.name)


class Co2(_WindowedSeries):
  """Weekly Mauna Loa CO2 1958-2001: 52 weeks -> the next week."""

  WINDOW = 52
  VALIDATION_START = 1994.0
  TEST_START = 1998.0
  DESCRIPTION = """
Weekly atmospheric CO2 at Mauna Loa, March 1958 - December 2001, in ppm (statsmodels' `co2`;
59 missing weeks interpolated inside their split). Windows of 52 weeks, scaled by train
statistics, predict the next week. Time-ordered splits: train to 1993, validation 1994-1997,
test 1998-2001; no window crosses a boundary.
"""
  CITATION = """
@techreport{keeling2004co2,
  author = {Keeling, C. D. and Whorf, T. P.},
  title = {Atmospheric CO2 records from sites in the SIO air sampling network},
  institution = {Scripps Institution of Oceanography},
  year = {2004}
}
"""
  HOMEPAGE = "https://www.statsmodels.org/stable/datasets/generated/co2.html"

  def _read(self) -> tuple[np.ndarray, np.ndarray]:
    return read_co2(self.name)
