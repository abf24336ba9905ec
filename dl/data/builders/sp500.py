"""The `sp500` data set: next-day return of ten S&P 500 stocks, offline, in time order.

River's `sp500.csv.gz` (read from the installed river wheel; river itself is not imported):
daily simple returns in percent of AAPL, AMZN, IBM, INTC, JNJ, JPM, KO, MSFT, WMT and XOM
over 1,257 trading days (2013-02-11 to 2018-02-06), and the next trading day's return of
their equal-weighted portfolio.

Each example is one trading day t (from the 5th on): `features` (float32, 5 x 10) the ten
stocks' returns on days t-4 .. t (oldest first), `label` (float32 scalar) the portfolio's
return on day t+1, in percent, and `date` (int32 YYYYMMDD) of day t. 1,253 examples.

One split, `train`, in time order (shuffling is disabled, so "train[:800]" is the first 800
days). Evaluate forecasts walk-forward (`dl.apps.forecasting`): a model fitted on days before a
test block, never after it.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders
from dl.data.builders import base

_INSTALL = "pip install --no-deps river==0.26.1"
_FILE = "river/datasets/sp500.csv.gz"
TICKERS = ("AAPL", "AMZN", "IBM", "INTC", "JNJ", "JPM", "KO", "MSFT", "WMT", "XOM")
WINDOW = 5


class Sp500(base.Builder):
  """Windows of ten stocks' daily returns and the next day's portfolio return, in time order."""

  DESCRIPTION = """
Daily returns (percent) of ten large S&P 500 stocks, 2013-02-11 to 2018-02-06, from the
river package. Each example: the last 5 days of the ten returns; label: the next day's
return of their equal-weighted portfolio. One chronological split of 1,253 examples.
"""
  HOMEPAGE = "https://riverml.xyz/latest/api/datasets/SP500Stocks/"
  SUPERVISED_KEYS = ("features", "label")
  DISABLE_SHUFFLING = True  # time order: slices are contiguous periods

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The window of returns, the next day's portfolio return and the day."""
    return {
      "features": tfds.features.Tensor(shape=(WINDOW, len(TICKERS)), dtype=np.float32),
      "label": tfds.features.Tensor(shape=(), dtype=np.float32),
      "date": tfds.features.Scalar(dtype=np.int32),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the one chronological split; nothing is downloaded."""
    del dl_manager  # The data ships inside river.
    return {"train": self._generate_examples(read_frame(self.name))}

  def _generate_examples(self, frame) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    """Yields (day t, example) for t = WINDOW - 1 .. last day, in order."""
    returns_TxK = frame[list(TICKERS)].to_numpy(np.float32)
    labels_T = frame["next_day_return"].to_numpy(np.float32)
    dates_T = frame["date"].str.replace("-", "").astype(int).to_numpy(np.int32)
    for t in range(WINDOW - 1, len(frame)):
      yield (
        t,
        {
          "features": returns_TxK[t - WINDOW + 1 : t + 1],
          "label": labels_T[t],
          "date": dates_T[t],
        },
      )


def read_frame(dataset: str = "sp500"):
  """River's sp500 table (a pandas DataFrame), or DataPackageMissingError saying how."""
  import pandas as pd  # pylint: disable=import-outside-toplevel

  return pd.read_csv(builders.package_file(dataset, "river", _FILE, _INSTALL))
