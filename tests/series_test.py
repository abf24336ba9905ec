"""Tests for the time-series builders: time-ordered splits without leakage, train scaling."""

import numpy as np
import pytest
import statsmodels.api as sm

import dl.data
from dl.data.builders import series


def test_windows_stay_inside_their_segment_and_scale_by_train_only():
  years = np.arange(30.0)
  values = np.arange(30.0) ** 2
  values[[3, 22]] = np.nan  # one gap in train, one in validation
  segments, mean, std = series.windowed_segments(years, values, window=4, starts=(20.0, 25.0))
  filled_train = np.arange(20.0) ** 2
  filled_train[3] = (2**2 + 4**2) / 2  # interpolated from its own segment
  assert mean == pytest.approx(filled_train.mean()) and std == pytest.approx(filled_train.std())
  for split, (first, last) in {"train": (0, 19), "validation": (20, 24), "test": (25, 29)}.items():
    segment = segments[split]
    assert (segment.first, segment.last) == (first, last)
    # The first target is `window` steps into the segment: no input from an earlier split.
    np.testing.assert_array_equal(segment.years_W, np.arange(first + 4, last + 1))
    inputs_years = segment.years_W[:, None] - np.arange(4, 0, -1)[None, :]
    assert inputs_years.min() >= first
  test = segments["test"]
  np.testing.assert_allclose(test.targets_W * std + mean, [29.0**2], rtol=1e-5)
  np.testing.assert_allclose(test.inputs_WxT[0] * std + mean, np.arange(25.0, 29.0) ** 2, rtol=1e-5)
  # Changing the test values changes neither the scaling nor the train windows.
  changed = values.copy()
  changed[25:] = 1e6
  other, mean2, std2 = series.windowed_segments(years, changed, window=4, starts=(20.0, 25.0))
  assert (mean2, std2) == (mean, std)
  np.testing.assert_array_equal(other["train"].inputs_WxT, segments["train"].inputs_WxT)


def test_a_segment_shorter_than_a_window_is_an_error():
  with pytest.raises(ValueError, match="split 'test' has 3 values; a window needs 5"):
    series.windowed_segments(np.arange(20.0), np.arange(20.0), window=4, starts=(10.0, 17.0))


@pytest.mark.parametrize(
  "name, window, sizes", [("sunspots", 12, (217, 28, 28)), ("co2", 52, (1814, 157, 157))]
)
def test_real_series_splits_are_time_ordered_without_leakage(name, window, sizes, data_dir):
  meta = dl.data.loading.builder_info(name, data_dir=data_dir).metadata
  arrays = {s: dl.data.load(name, s, data_dir=data_dir) for s in series.SPLITS}
  assert tuple(len(arrays[s]["label"]) for s in series.SPLITS) == sizes
  for split in series.SPLITS:
    assert arrays[split]["features"].shape[1:] == (window,)
    assert np.isfinite(arrays[split]["features"]).all()
  # Test strictly after validation strictly after train, for targets and inputs alike.
  assert arrays["train"]["year"].max() < meta["validation_years"][0]
  assert arrays["validation"]["year"].max() < meta["test_years"][0]
  assert meta["test_years"][1] == pytest.approx(arrays["test"]["year"].max())
  # Each split's first target has `window` values of its own segment before it.
  # (Years are stored as float32: compare with half a week's slack.)
  years = _all_years(name)
  num_before = {s: np.sum(years < arrays[s]["year"].min() - 0.005) for s in series.SPLITS}
  num_segment_start = {s: np.sum(years < meta[f"{s}_years"][0] - 0.005) for s in series.SPLITS}
  for split in series.SPLITS:
    assert num_before[split] - num_segment_start[split] == window


def test_sunspots_values_are_the_source_scaled_by_train_statistics(data_dir):
  meta = dl.data.loading.builder_info("sunspots", data_dir=data_dir).metadata
  mean, std = meta["mean"], meta["std"]
  source = sm.datasets.sunspots.load_pandas().data.set_index("YEAR")["SUNACTIVITY"]
  assert mean == pytest.approx(source.loc[:1928].mean())
  arrays = dl.data.load("sunspots", "test", data_dir=data_dir)
  order = np.argsort(arrays["year"])
  first = order[0]
  np.testing.assert_allclose(arrays["label"][first] * std + mean, source.loc[1981.0], rtol=1e-5)
  np.testing.assert_allclose(
    arrays["features"][first] * std + mean, source.loc[1969.0:1980.0].to_numpy(), rtol=1e-5
  )


def _all_years(name: str) -> np.ndarray:
  read = series.read_sunspots if name == "sunspots" else series.read_co2
  return read()[0]
