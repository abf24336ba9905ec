"""A tiny run of experiments/sunspots_forecast.py: every forecaster scored on the test years."""

import importlib.util
import pathlib
import re
import sys

import numpy as np
import statsmodels.api as sm

_SCRIPT = pathlib.Path(__file__).parent.parent / "experiments" / "sunspots_forecast.py"


def _load_script():
  spec = importlib.util.spec_from_file_location("sunspots_forecast", _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tiny_study_writes_table_and_plot(tmp_path, monkeypatch):
  out = tmp_path / "results.md"
  argv = ["x", "--workdir", str(tmp_path / "w"), "--out", str(out), "--cells", "gru"]
  monkeypatch.setattr(sys, "argv", [*argv, "--steps", "2", "--seeds", "1"])
  _load_script().main()
  text = out.read_text()
  rows = dict(re.findall(r"^\| ([^|]+?) \| ([\d.]+) \| [\d.]+ \|$", text, flags=re.M))
  assert set(rows) == {
    "persistence",
    "AutoReg(9), AIC-selected",
    "ARIMA(2, 0, 1)",
    "GRU (hidden 32)",
  }
  assert all(np.isfinite(float(v)) for v in rows.values())
  # Persistence on the test targets 1981-2008, computed from the source series directly.
  source = sm.datasets.sunspots.load_pandas().data.set_index("YEAR")["SUNACTIVITY"]
  expected = np.mean(np.abs(source.loc[1981:2008].to_numpy() - source.loc[1980:2007].to_numpy()))
  assert float(rows["persistence"]) == round(expected, 2)
  assert "1981-2008 (28 years)" in text
  assert (tmp_path / "results.png").stat().st_size > 10_000
