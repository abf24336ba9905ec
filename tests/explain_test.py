"""Attributions: IG completeness, Grad-CAM against a hand-split model, the randomisation check."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_config import tiny_config

import dl
from dl.trust import explain


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A small digits CNN trained for 120 steps, and the 8 of the first 64 test images whose class
  score differs most from a black image's (a relative completeness error needs a clear gap)."""
  config = tiny_config(num_steps=120, learning_rate=1e-2, eval_every=120)
  config.model = {"name": "cnn", "features": 8, "hidden": 32}
  state, history = dl.train(config, str(tmp_path_factory.mktemp("cnn")))
  assert history["test"][-1]["accuracy"] > 0.8
  task = dl.build(config)
  variables = {"params": state.params, **state.model_state}
  x, y = jnp.asarray(task.test["input"][:64]), jnp.asarray(task.test["label"][:64])
  model = task.model.module
  gap = explain.class_scores(model, variables, x, y) - explain.class_scores(
    model, variables, jnp.zeros_like(x), y
  )
  keep = np.argsort(-np.abs(np.asarray(gap)))[:8]
  return task, variables, x[keep], y[keep]


def _completeness_error(model, variables, x, y, baseline, **kwargs) -> np.ndarray:
  attributions = explain.integrated_gradients(model, variables, x, y, baseline, **kwargs)
  base = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), x.shape)
  gap = explain.class_scores(model, variables, x, y) - explain.class_scores(
    model, variables, base, y
  )
  assert np.abs(gap).min() > 0.25  # Else a relative error says little.
  return np.abs(np.asarray(attributions.sum(axis=(1, 2, 3)) - gap)) / np.abs(np.asarray(gap))


@pytest.mark.parametrize("method", explain.METHODS)
def test_integrated_gradients_completeness(trained, method):
  task, variables, x, y = trained
  mean_image = jnp.asarray(task.train.arrays["input"].mean(axis=0))
  noise = jax.random.uniform(jax.random.PRNGKey(3), x.shape)
  for baseline in (0.0, mean_image, noise):  # black, one image, one per example
    error = _completeness_error(
      task.model.module, variables, x, y, baseline, num_steps=256, method=method
    )
    assert error.max() < 0.01, (method, error)
  coarse = _completeness_error(task.model.module, variables, x, y, 0.0, num_steps=1, method=method)
  assert coarse.max() > 0.01  # The check can fail: one step is too few.


def test_integrated_gradients_rejects_bad_arguments(trained):
  task, variables, x, y = trained
  with pytest.raises(ValueError, match="method must be one of"):
    explain.integrated_gradients(task.model.module, variables, x, y, method="simpson")
  with pytest.raises(ValueError, match="num_steps must be >= 1; got 0"):
    explain.integrated_gradients(task.model.module, variables, x, y, num_steps=0)


def test_smoothgrad_without_noise_is_the_gradient(trained):
  task, variables, x, y = trained
  sg = explain.smoothgrad(
    task.model.module, variables, x, y, jax.random.PRNGKey(0), num_samples=2, noise_level=0.0
  )
  np.testing.assert_allclose(sg, explain.saliency(task.model.module, variables, x, y), atol=1e-6)


def test_saliency_is_each_examples_own_gradient(trained):
  task, variables, x, y = trained
  batched = explain.saliency(task.model.module, variables, x, y)
  one = explain.saliency(task.model.module, variables, x[3:4], y[3:4])
  np.testing.assert_allclose(batched[3:4], one, atol=1e-6)


class _Split(nn.Module):
  """A conv trunk and a dense head that can also be applied one at a time."""

  def setup(self):
    self.features = nn.Conv(6, (3, 3))
    self.head = nn.Dense(3)

  def __call__(self, x, train=False):
    return self.classify(self.features(x))

  def classify(self, act):
    return self.head(nn.relu(act).reshape((act.shape[0], -1)))

  def trunk(self, x):
    return self.features(x)


def test_grad_cam_matches_a_hand_split_model():
  model = _Split()
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 5, 2))
  y = jnp.array([0, 1, 2, 1])
  variables = model.init(jax.random.PRNGKey(0), x)
  act = model.apply(variables, x, method=_Split.trunk)

  def score(a):
    logits = model.apply(variables, a, method=_Split.classify)
    return jnp.take_along_axis(logits, y[:, None], axis=1).sum()

  weights = jax.grad(score)(act).mean(axis=(1, 2))
  expected = np.maximum(np.einsum("bhwk,bk->bhw", act, weights), 0)
  expected /= np.where(expected.max(axis=(1, 2)) > 0, expected.max(axis=(1, 2)), 1)[:, None, None]
  cam = explain.grad_cam(model, variables, x, y, layer="features", resize=False)
  np.testing.assert_allclose(cam, expected, atol=1e-5)
  with pytest.raises(ValueError, match=r"submodules \['features', 'head'\]; got 'conv'"):
    explain.grad_cam(model, variables, x, y, layer="conv")


def test_maps_change_when_weights_are_randomised(trained):
  """Adebayo et al. (2018): a map that survives randomising the model explains nothing."""
  task, variables, x, y = trained
  params = task.model.module.init(jax.random.PRNGKey(7), x[:1])["params"]
  random_vars = {**variables, "params": params}
  key = jax.random.PRNGKey(0)
  maps = {
    "gradient": lambda v: explain.heatmap(explain.saliency(task.model.module, v, x, y)),
    "smoothgrad": lambda v: explain.heatmap(
      explain.smoothgrad(task.model.module, v, x, y, key, num_samples=8)
    ),
    "grad_cam": lambda v: explain.grad_cam(task.model.module, v, x, y, layer="Conv_1"),
  }
  for name, fn in maps.items():
    trained_map = fn(variables)
    same = explain.rank_correlation(trained_map, fn(variables))
    np.testing.assert_allclose(same, 1.0, atol=1e-6)
    randomised = float(jnp.mean(explain.rank_correlation(trained_map, fn(random_vars))))
    assert randomised < 0.5, (name, randomised)
  other_noise = explain.smoothgrad(
    task.model.module, variables, x, y, jax.random.PRNGKey(1), num_samples=8
  )
  stable = explain.rank_correlation(maps["smoothgrad"](variables), explain.heatmap(other_noise))
  assert float(jnp.mean(stable)) > 0.8  # Same model, new noise: the map stays.


def test_save_overlays_writes_a_png(trained, tmp_path):
  task, variables, x, y = trained
  cam = explain.grad_cam(task.model.module, variables, x[:3], y[:3], layer="Conv_1")
  path = explain.save_overlays(str(tmp_path / "maps.png"), x[:3], {"Grad-CAM": cam}, titles="abc")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match=r"must have shape \(3, 8, 8\); got \(3, 4, 4\)"):
    explain.save_overlays(str(tmp_path / "bad.png"), x[:3], {"bad": cam[:, :4, :4]})
