"""The recommendation and detection studies run end to end at a tiny size on small stand-in data."""

import importlib.util
import math
import pathlib

import jax
import numpy as np
import pytest

import dl
from dl.data.builders import mnist5k, movielens_100k, synthetic_digit_boxes

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"


def _study(name):
  spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(autouse=True)
def fast_random_compile():
  """Non-partitionable threefry: compiling parameter init is ~6x faster on CPU (same math)."""
  with jax.threefry_partitionable(False):
    yield


@pytest.fixture
def own_data_dir(monkeypatch, tmp_path):
  """A data dir of its own: the stand-in data sets must not replace the session's real ones."""
  monkeypatch.setenv("DL_DATA_DIR", str(tmp_path / "tfds"))


def test_movielens_study_tiny(monkeypatch, tmp_path, own_data_dir):
  rng = np.random.default_rng(0)
  n = 700  # 40 users, each with several ratings; any of the 1,682 items
  table = {
    "features": np.stack([rng.integers(0, 40, n), rng.integers(0, 300, n)], 1).astype(np.int32),
    "label": rng.integers(1, 6, n).astype(np.float32),
    "timestamp": rng.integers(0, 10**9, n),
  }
  monkeypatch.setattr(movielens_100k, "read_ratings", lambda dataset: table)
  explicit, implicit = _study("movielens_recommend").run(str(tmp_path / "work"), tiny=True)
  assert [r["model"] for r in explicit] == ["global mean rating", "matrix factorisation"]
  assert all(0.5 < r["rmse"] < 3.0 for r in explicit)
  assert [r["model"] for r in implicit] == ["most popular", "NeuMF"]
  for row in implicit:
    assert 0.0 <= row["ndcg@10"] <= row["hr@10"] <= 1.0
  assert (tmp_path / "work" / "results.md").read_text().count("\n") == 6
  # The implicit run went through dl.fit: validation NDCG@10 chose the checkpoint that the
  # test row scores.
  history = dl.read_history(str(tmp_path / "work" / "implicit_neumf" / "metrics.jsonl"))
  assert {"hr@10", "ndcg@10"} <= set(history["eval"][-1])
  assert history["test"][-1]["ndcg@10"] == implicit[1]["ndcg@10"]


def test_detection_study_tiny(monkeypatch, tmp_path, own_data_dir):
  images = np.zeros((5000, 28, 28, 1), np.uint8)
  images[:, 6:22, 8:20] = 200
  monkeypatch.setattr(mnist5k, "read_digits", lambda dataset: (images, np.arange(5000) % 10))
  monkeypatch.setattr(synthetic_digit_boxes, "SPLIT_SIZES", {"train": 64, "test": 16})
  study = _study("synthetic_digit_boxes_centernet")
  workdir = tmp_path / "work"
  result = study.run(str(workdir), tiny=True)
  assert 0.0 <= result["map"] <= 1.0 and not math.isnan(result["map"])
  assert (workdir / "detections.png").stat().st_size > 1000
  assert "SYNTHETIC" in (workdir / "results.md").read_text()
  assert (workdir / "checkpoints").is_dir()
  history = dl.read_history(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in history["eval"]] == [1, 2, 3] and "map" in history["eval"][-1]
  assert history["test"][-1]["map"] == result["map"]
