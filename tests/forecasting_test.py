"""Walk-forward folds never look ahead; the sp500 builder; forecast scores."""

import sys
from importlib import metadata

import flax.linen as nn
import numpy as np
import optax
import pytest

import dl
from dl.apps import forecasting
from dl.data.builders import sp500


@pytest.fixture(scope="module")
def days():
  return dl.data.load("sp500", "train")


def test_sp500_builder_is_in_time_order_and_labels_the_next_day(days):
  assert days["features"].shape == (1253, sp500.WINDOW, len(sp500.TICKERS)) == (1253, 5, 10)
  assert (days["date"][0], days["date"][-1]) == (20130215, 20180206)
  assert np.all(np.diff(days["date"]) > 0)  # stored and read in time order
  # The label of day t is the equal-weighted return of day t+1, the next example's last row.
  np.testing.assert_allclose(days["label"][:-1], days["features"][1:, -1].mean(axis=1), atol=1e-5)
  # Each window ends on its own day and overlaps the next one by 4 days.
  np.testing.assert_array_equal(days["features"][1:, :-1], days["features"][:-1, 1:])


def test_sp500_names_the_install_command(monkeypatch, tmp_path):
  def missing(name):
    raise metadata.PackageNotFoundError(name)

  monkeypatch.setattr(metadata, "distribution", missing)
  with pytest.raises(
    dl.data.DataPackageMissingError, match=r"pip install --no-deps river==0\.26\.1"
  ):
    dl.data.load("sp500", "train", data_dir=str(tmp_path))
  assert "river" not in sys.modules  # the data is read without importing river


@pytest.mark.parametrize("max_train_size", [None, 300])
def test_walk_forward_folds_never_look_ahead(days, max_train_size):
  folds = forecasting.walk_forward_folds(
    1253, num_folds=4, test_size=100, max_train_size=max_train_size
  )
  assert [f.test for f in folds] == [f"train[{s}:{s + 100}]" for s in (853, 953, 1053, 1153)]
  for fold in folds:
    train = dl.data.load("sp500", fold.train)
    test = dl.data.load("sp500", fold.test)
    assert train["date"].max() < test["date"].min()  # every training day precedes the test block
    assert fold.train_range.stop == fold.test_range.start  # and ends right before it
    # The last training example's label (the next day's return) is the first test day's
    # return, known when that day's forecast is made: the test block's own labels are not.
    np.testing.assert_allclose(train["label"][-1], test["features"][0, -1].mean(), atol=1e-5)
    expected_start = 0 if max_train_size is None else fold.test_range.start - max_train_size
    assert fold.train_range.start == expected_start
  gapped = forecasting.walk_forward_folds(1253, num_folds=2, test_size=100, gap=5)
  assert gapped[0].train_range.stop + 5 == gapped[0].test_range.start


def test_forecast_scores_known_answer():
  targets, predictions = np.array([1.0, -1.0, 2.0]), np.array([0.5, -0.5, -1.0])
  s = forecasting.scores(targets, predictions)
  assert s["mae"] == pytest.approx(4 / 3)
  assert s["rmse"] == pytest.approx(np.sqrt((0.25 + 0.25 + 9) / 3))
  assert s["direction_accuracy"] == pytest.approx(2 / 3)
  assert np.isnan(forecasting.scores(targets, np.zeros(3))["direction_accuracy"])
  with pytest.raises(ValueError, match=r"both be \(N,\)"):
    forecasting.scores(targets, predictions[:, None])


def _tiny_regression(**overrides):
  config = dl.default_config()
  config.dataset = "sp500"
  config.objective = "regression"
  config.model.name = "mlp"
  config.model.width = 8
  config.model.depth = 1
  config.fit.batch_size = 16
  config.fit.num_steps = 4
  config.fit.log_every = 2
  config.fit.best_metric = "loss"
  config.fit.best_mode = "min"
  config.fit.progress = False
  config.fit.tensorboard = False
  for key, value in overrides.items():
    config[key] = value
  return config


def test_walk_forward_refits_per_fold_on_the_past(days, tmp_path):
  folds = forecasting.walk_forward_folds(1253, num_folds=2, test_size=20, max_train_size=400)
  config = _tiny_regression()
  config.fit.ensemble_size = 2
  result = forecasting.walk_forward(config, folds, str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0", "fold1"]
  assert result.member_predictions_SxN.shape == (2, 40)
  np.testing.assert_allclose(result.predictions_N, result.member_predictions_SxN.mean(axis=0))
  np.testing.assert_array_equal(result.fold_N, [0] * 20 + [1] * 20)
  np.testing.assert_allclose(result.targets_N, days["label"][1213:1253], rtol=1e-6)
  for k, fold in enumerate(folds):  # the historical mean uses the fold's training days only
    expected = days["label"][fold.train_range].mean()
    np.testing.assert_allclose(result.train_means_N[result.fold_N == k], expected, rtol=1e-5)
    # Inputs are standardised by the statistics of the fold's training days alone.
    config = _tiny_regression(**forecasting.fold_splits(fold))
    task = dl.build(config)
    assert task.eval is None  # nothing is chosen per fold: no validation hold-out
    np.testing.assert_allclose(task.train.arrays["input"].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(task.train.arrays["input"].std(axis=0), 1.0, atol=1e-4)
    train_x = days["features"][fold.train_range]
    expected_test_x = (days["features"][fold.test_range] - train_x.mean(0)) / train_x.std(0)
    np.testing.assert_allclose(task.test["input"], expected_test_x, atol=1e-4)


def test_walk_forward_refits_a_task_factory_per_fold(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 3)).astype(np.float32)
  y = (x @ np.float32([1.0, -2.0, 0.5]) + 3.0).astype(np.float32)  # a level the mean misses
  folds = forecasting.walk_forward_folds(200, num_folds=2, test_size=20)
  calls = []

  def make(fold):
    calls.append(fold)
    train, test = fold.train_range, fold.test_range
    return dl.task(
      model=nn.Dense(1),
      objective=dl.core.objectives.create("regression"),
      optimizer=optax.adam(0.05),
      train={"input": x[train], "label": y[train]},
      test={"input": x[test], "label": y[test]},
      validation_fraction=0.0,
    )

  fit = dl.FitConfig(num_steps=150, batch_size=32, log_every=50, progress=False, tensorboard=False)
  result = forecasting.walk_forward(make, folds, str(tmp_path), fit=fit)
  assert calls == folds and sorted(p.name for p in tmp_path.iterdir()) == ["fold0", "fold1"]
  np.testing.assert_allclose(result.targets_N, y[160:200])
  for k, fold in enumerate(folds):
    np.testing.assert_allclose(result.train_means_N[result.fold_N == k], y[fold.train_range].mean())
  # The refit model forecasts far better than the historical mean of its training part.
  fitted = forecasting.scores(result.targets_N, result.predictions_N)["rmse"]
  assert fitted < 0.2 * forecasting.scores(result.targets_N, result.train_means_N)["rmse"]
  with pytest.raises(ValueError, match="pass fit only with a task factory"):
    forecasting.walk_forward(_tiny_regression(), folds, str(tmp_path / "c"), fit=fit)
