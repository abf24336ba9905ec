"""Ensembles and sweeps: K models in one vmapped program, each as if trained alone."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny_config import tiny_config

import dl
from dl import models


def _member(state, i):
  return jax.tree.map(lambda x: x[i], state)


def test_ensemble_of_8_equals_8_separate_runs(tmp_path):
  config = tiny_config(ensemble_size=8, steps_per_dispatch=5)
  ensemble, history = dl.train(config, str(tmp_path / "ensemble"))
  assert ensemble.step.shape == (8,)
  assert len(history["eval"][-1]["accuracy"]) == 8
  for seed in range(8):
    alone, alone_history = dl.train(
      tiny_config(seed=seed, steps_per_dispatch=5), str(tmp_path / f"seed{seed}")
    )
    # Batched matmuls sum in another order: agreement to float32 rounding after 40 steps.
    chex.assert_trees_all_close(_member(ensemble.params, seed), alone.params, rtol=1e-5, atol=1e-5)
    assert history["eval"][-1]["accuracy"][seed] == pytest.approx(
      alone_history["eval"][-1]["accuracy"], abs=1e-6
    )


def test_learning_rate_sweep_members_match_single_runs(tmp_path):
  rates = (0.003, 0.03)
  sweep, _ = dl.train(tiny_config(sweep_learning_rate=rates), str(tmp_path / "sweep"))
  lrs = dl.training.optim.get_hyperparam(sweep.opt_state, "learning_rate")
  np.testing.assert_allclose(lrs, rates, rtol=1e-6)
  for i, rate in enumerate(rates):
    alone, _ = dl.train(tiny_config(learning_rate=rate), str(tmp_path / f"lr{i}"))
    chex.assert_trees_all_close(_member(sweep.params, i), alone.params, rtol=1e-5, atol=1e-5)


def test_ensemble_resumes_and_restores(tmp_path):
  config = tiny_config(ensemble_size=3)
  state, _ = dl.train(config, str(tmp_path))
  restored = dl.restore(config, str(tmp_path))
  chex.assert_trees_all_equal(state.params, restored.params)
  assert dl.evaluate(restored, dl.build(config).model, dl.build(config).eval)["accuracy"][2] > 0.5


def test_ensemble_needs_jit_mode(tmp_path):
  with pytest.raises(ValueError, match="ensembles and sweeps run as one vmapped program"):
    dl.train(tiny_config(ensemble_size=2, parallel="data"), str(tmp_path))


def test_per_example_grads_average_to_the_batch_gradient():
  model = models.MLP(num_classes=3, width=8, depth=1)
  state = dl.create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), (4,))
  rng = np.random.default_rng(0)
  batch = {
    "input": rng.normal(size=(6, 4)).astype(np.float32),
    "label": rng.integers(0, 3, 6).astype(np.int32),
  }
  loss = dl.grads.example_loss(model, state)
  per_example = dl.grads.per_example_grads(loss, state.params, batch)
  assert per_example["Dense_0"]["kernel"].shape == (6, 4, 8)

  def batch_loss(params):
    logits = model.apply({"params": params}, batch["input"])
    return dl.objectives.cross_entropy(logits, batch["label"]).mean()

  chex.assert_trees_all_close(
    jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example),
    jax.grad(batch_loss)(state.params),
    rtol=1e-5,
    atol=1e-6,
  )
  # Each example's gradient is its own: they differ.
  assert not np.allclose(per_example["Dense_0"]["bias"][0], per_example["Dense_0"]["bias"][1])
