"""The application studies of experiments/ run end to end at a tiny size (`--tiny`)."""

import importlib.util
import json
import pathlib

import pytest

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"


def _study(name: str):
  spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _table_rows(text: str) -> list[list[str]]:
  rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
  return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def test_breast_cancer_calibration_tiny(tmp_path):
  _study("breast_cancer_calibration").main(["--tiny", "--seeds", "2", "--workdir", str(tmp_path)])
  text = (tmp_path / "results.md").read_text()
  rows = _table_rows(text)
  assert [r[0] for r in rows] == [
    "MLP 64x2, dl.train (2 seeds)",
    "LogisticRegression (scikit-learn)",
  ]
  assert "±" in rows[0][1] and "±" not in rows[1][1]
  assert all(0 <= float(cell.split(" ")[0]) for row in rows for cell in row[1:])
  assert "train 273 / validation 182 / test 114" in text
  assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_credit_default_tiny(tmp_path):
  _study("credit_default").main(["--tiny", "--seeds", "2", "--workdir", str(tmp_path)])
  rows = _table_rows((tmp_path / "results.md").read_text())
  assert [r[0].split(" ")[0] for r in rows] == [
    "MLP",
    "HistGradientBoostingClassifier",
    "LogisticRegression",
  ]
  for row in rows:
    roc_auc, pr_auc = (float(cell.split(" ")[0]) for cell in row[1:3])
    assert 0 < roc_auc <= 1 and 0 < pr_auc <= 1


def test_learning_curves_tiny(tmp_path, capsys):
  _study("learning_curves").main(["--tiny", "--workdir", str(tmp_path)])
  for dataset, size in (("digits", 144), ("breast_cancer", 46)):  # 10% of the train split
    assert (tmp_path / dataset / "learning_curve.png").exists()
    curve = json.loads((tmp_path / dataset / "learning_curve.json").read_text())
    assert curve["train_sizes"] == [size] and len(curve["values"][0]) == 2
  assert "| breast_cancer | 46 |" in capsys.readouterr().out


def test_sp500_forecast_tiny(tmp_path):
  _study("sp500_forecast").main(["--tiny", "--seeds", "2", "--workdir", str(tmp_path)])
  text = (tmp_path / "results.md").read_text()
  rows = {r[0]: r[1:] for r in _table_rows(text)}
  assert list(rows) == [
    "MLP 32, dl.train (mean of 2 seeds)",
    "MLP 32, seed 0 alone",
    "RidgeCV (scikit-learn)",
    "zero return (random walk)",
    "historical mean of the training days",
    "persistence (today's return)",
  ]
  assert rows["zero return (random walk)"][2] == "n/a (no direction)"
  assert all(float(mae) > 0 for mae, _, _ in rows.values())
  assert "2 folds x 20 test days = 40 out-of-sample days" in text
  assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0", "fold1", "results.md"]


STUDIES = ["breast_cancer_calibration", "credit_default", "learning_curves", "sp500_forecast"]


@pytest.mark.parametrize("name", STUDIES)
def test_studies_document_their_command(name):
  doc = _study(name).__doc__
  assert f"python experiments/{name}.py --workdir workdirs/" in doc
