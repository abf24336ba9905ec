import numpy as np
import pytest
from tiny_config import tiny_config
from tiny_export import exported_cnn

import dl
from dl.data.transforms import Preprocess
from dl.deploy import export, monitor


def _noisy(images, sigma, seed=0):
  noise = np.random.default_rng(seed).normal(0, sigma, images.shape)
  return np.clip(images + noise, 0, 255).astype(np.uint8)


def test_embedding_drift_flags_noise_and_held_out_classes_not_clean_digits():
  *_, directory = exported_cnn()
  model = export.load(directory)
  test = dl.data.load("digits", "test")
  images, labels = test["image"], test["label"]
  clean = model.check_drift(images)
  assert model.reference.kind == "embeddings"
  assert not clean.drifted, str(clean)
  assert clean.mmd_pvalue > 0.05
  noisy = model.check_drift(_noisy(images, sigma=64))
  assert noisy.drifted and noisy.mmd_pvalue < 0.01, str(noisy)
  assert noisy.mmd > 3 * clean.mmd
  only_low_digits = model.check_drift(images[labels < 5])  # digits 5-9 held out
  assert only_low_digits.drifted and only_low_digits.mmd_pvalue < 0.01, str(only_low_digits)


def test_thresholds_are_the_users():
  *_, directory = exported_cnn()
  model = export.load(directory)
  noisy = _noisy(dl.data.load("digits", "test")["image"], sigma=64)
  lax = monitor.Thresholds(psi=10.0, ks_pvalue=1e-12, mmd_pvalue=1e-6)
  assert not model.check_drift(noisy, lax).drifted


def test_tabular_export_standardises_exactly_and_flags_shifted_features(tmp_path):
  config = tiny_config(dataset="breast_cancer", num_steps=20, eval_every=20)
  state, _ = dl.train(config, str(tmp_path / "run"))
  task = dl.build(config)
  export.export(task, state, str(tmp_path / "export"), batch_sizes=(3, 114))
  model = export.load(str(tmp_path / "export"))
  features = dl.data.load("breast_cancer", "test")["features"]
  np.testing.assert_array_equal(model(features), dl.predict(task, state, features))
  assert model.spec["inputs"][0]["preprocessing"]["kind"] == "standardize"
  assert model.reference.kind == "features" and len(model.reference.names) == 30
  # The reference describes the model's (standardised) inputs, from the task's own arrays.
  np.testing.assert_allclose(model.reference.sample_NxF.mean(0), 0.0, atol=0.2)
  clean = model.check_drift(features)
  assert not clean.drifted, str(clean)
  shifted = features.copy()
  shifted[:, [0, 7]] *= 1.5  # e.g. a miscalibrated instrument on two features
  report = model.check_drift(shifted)
  assert report.drifted, str(report)
  assert set(report.drifted_features) <= {"feature_0", "feature_7"}
  assert report.drifted_features


def test_feature_drift_is_the_same_on_standardised_features():
  rng = np.random.default_rng(0)
  raw = rng.normal(50.0, [1.0, 10.0, 1000.0], size=(800, 3))
  batch = raw[:200] * [1.0, 1.3, 1.0] + [0.0, 0.0, 800.0]  # two features shifted
  standardize = Preprocess.fit(raw)
  on_raw = monitor.check(monitor.reference(raw), batch)
  on_model_inputs = monitor.check(monitor.reference(standardize(raw)), standardize(batch))
  np.testing.assert_allclose(on_model_inputs.psi_F, on_raw.psi_F, atol=1e-3)
  np.testing.assert_allclose(on_model_inputs.ks_statistic_F, on_raw.ks_statistic_F, atol=1e-2)
  assert on_raw.drifted_features == on_model_inputs.drifted_features == ("feature_1", "feature_2")


def test_reference_round_trips_and_identical_data_has_zero_psi(tmp_path):
  x = np.random.default_rng(0).normal(size=(500, 3))
  ref = monitor.reference(x, names=["a", "b", "c"])
  ref.save(str(tmp_path / "ref.npz"))
  loaded = monitor.Reference.load(str(tmp_path / "ref.npz"))
  assert loaded.names == ("a", "b", "c") and loaded.bandwidth == ref.bandwidth
  report = monitor.check(loaded, x)
  np.testing.assert_allclose(report.psi_F, 0.0, atol=1e-12)
  assert not report.drifted
  with pytest.raises(ValueError, match="3 features per example; got 2"):
    monitor.check(loaded, x[:, :2])
