import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dl
from dl import models
from dl.core import objectives


def test_regression_is_mean_squared_error_per_example():
  preds_Bx1 = jnp.array([[1.0], [2.0], [0.0]])
  batch = {"label": jnp.array([0.0, 4.0, 0.5])}
  loss_B, metrics = objectives.regression(preds_Bx1, batch)
  np.testing.assert_allclose(loss_B, [1.0, 4.0, 0.25])
  np.testing.assert_allclose(metrics["mae"], [1.0, 2.0, 0.5])


def test_regression_with_vector_targets_averages_over_them():
  batch = {"label": jnp.zeros((2, 3))}
  loss_B, _ = objectives.regression(jnp.array([[1.0, 1.0, 1.0], [3.0, 0.0, 0.0]]), batch)
  np.testing.assert_allclose(loss_B, [1.0, 3.0])


def test_next_token_weights_ignore_padded_targets():
  logits_BxLxV = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5))
  labels_BxL = jnp.array([[1, 2, 3, 4], [0, 1, 0, 0]])
  full, _ = objectives.next_token(logits_BxLxV, {"label": labels_BxL})
  weights = jnp.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  padded, metrics = objectives.next_token(logits_BxLxV, {"label": labels_BxL, "weights": weights})
  # Changing the padded targets changes nothing.
  other, _ = objectives.next_token(
    logits_BxLxV, {"label": labels_BxL.at[0, 2:].set(0), "weights": weights}
  )
  np.testing.assert_allclose(padded, other)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV[0, :2], labels_BxL[0, :2])
  np.testing.assert_allclose(padded[0], expected.mean(), rtol=1e-6)
  np.testing.assert_allclose(padded[1], full[1])
  np.testing.assert_allclose(metrics["bits_per_token"], padded / np.log(2), rtol=1e-6)


@pytest.mark.parametrize(
  "objective, outputs, label, message",
  [
    ("classification", (4, 3), np.zeros(4, np.float32), "integer class ids"),
    ("classification", (4, 3, 2), np.zeros(4, np.int32), r"outputs of shape \(B, num_classes\)"),
    ("regression", (4, 1), np.zeros(4, np.int32), "float targets"),
    ("regression", (4, 2), np.zeros(4, np.float32), r"1 output\(s\) per example"),
    ("next_token", (4, 3, 7), np.zeros((4, 2), np.int32), r"logits of shape \(B, L, vocab\)"),
  ],
)
def test_mismatched_outputs_and_labels_are_named(objective, outputs, label, message):
  with pytest.raises(ValueError, match=message):
    objectives.create(objective)(jnp.zeros(outputs), {"label": jnp.asarray(label)})


def test_label_smoothing_is_only_for_classification():
  with pytest.raises(ValueError, match="label_smoothing applies to objective 'classification'"):
    objectives.create("regression", label_smoothing=0.1)
  with pytest.raises(ValueError, match="unknown objective 'ranking'"):
    objectives.create("ranking")


def test_regression_train_step_fits_a_linear_map():
  model = models.MLP(num_classes=2, width=16, depth=1)
  tx = optax.adam(3e-2)
  state = dl.create_train_state(model, tx, jax.random.PRNGKey(0), (3,))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 3)).astype(np.float32)
  batch = {"input": x, "label": (x @ rng.normal(size=(3, 2))).astype(np.float32)}
  step = jax.jit(
    functools.partial(dl.train_step, model=model, tx=tx, objective=objectives.regression)
  )
  _, first = step(state, batch)
  for _ in range(200):
    state, metrics = step(state, batch)
  assert set(metrics) == {"loss", "mse", "mae"}
  assert metrics["loss"] < 0.02 * first["loss"]
  sums = dl.eval_step(state, batch, model=model, objective=objectives.regression)
  np.testing.assert_allclose(sums["mse"] / sums["count"], metrics["loss"], rtol=0.2)


def test_train_regression_end_to_end(tmp_path):
  config = dl.default_config()
  config.update(dataset="diabetes", objective="regression", learning_rate=3e-2)
  config.fit.update(batch_size=32, num_steps=60, eval_every=30, progress=False, tensorboard=False)
  config.model.update(name="mlp", width=16, depth=1)
  state, history = dl.train(config, str(tmp_path))
  first, last = history["eval"][0], history["eval"][-1]
  assert set(last) == {"step", "loss", "mse", "mae", "rmse"}
  np.testing.assert_allclose(last["rmse"], np.sqrt(last["mse"]), rtol=1e-6)
  assert last["loss"] < first["loss"]
  # The best checkpoint is the lowest eval loss (best_metric defaults to "loss" here).
  task = dl.build(config)
  assert task.selection == ("loss", "min")
  preds = dl.predict(task, state, dl.data.load("diabetes", "test")["features"][:5])
  assert preds.shape == (5, 1) and preds.dtype == np.float32
  assert (tmp_path / "curves.png").stat().st_size > 0


def test_objective_must_fit_the_labels(tmp_path):
  config = dl.default_config()
  config.dataset = "diabetes"
  config.fit.update(num_steps=1, progress=False)
  config.model.name = "mlp"
  with pytest.raises(ValueError, match="Set config.objective='regression'"):
    dl.train(config, str(tmp_path))
  config.objective, config.fit.best_metric = "regression", "accuracy"
  with pytest.raises(ValueError, match=r"best_metric must be one of \('loss', 'mae'"):
    dl.parse_config(config)
