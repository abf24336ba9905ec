"""Ensembles and sweeps: K models in one vmapped program, each as if trained alone."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from sklearn.datasets import load_digits
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
  sweep, _ = dl.train(tiny_config(sweep={"learning_rate": rates}), str(tmp_path / "sweep"))
  lrs = dl.training.optim.get_hyperparam(sweep.opt_state, "learning_rate")
  np.testing.assert_allclose(lrs, rates, rtol=1e-6)
  for i, rate in enumerate(rates):
    alone, _ = dl.train(tiny_config(learning_rate=rate), str(tmp_path / f"lr{i}"))
    chex.assert_trees_all_close(_member(sweep.params, i), alone.params, rtol=1e-5, atol=1e-5)


def test_ensemble_resumes_and_restores(tmp_path):
  config = tiny_config(ensemble_size=3)
  state, _ = dl.train(config, str(tmp_path))
  restored = dl.restore(config, str(tmp_path), step=None)
  chex.assert_trees_all_equal(state.params, restored.params)
  assert dl.evaluate(restored, dl.build(config).model, dl.build(config).eval)["accuracy"][2] > 0.5


def test_ensemble_needs_jit_mode(tmp_path):
  with pytest.raises(ValueError, match="fit.parallel must be 'jit' for ensembles and sweeps"):
    dl.train(tiny_config(ensemble_size=2, parallel="data"), str(tmp_path))


def test_per_example_grads_average_to_the_batch_gradient():
  model = models.MLP(num_classes=3, width=8, depth=1)
  state = dl.create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), (4,))
  rng = np.random.default_rng(0)
  batch = {
    "input": rng.normal(size=(6, 4)).astype(np.float32),
    "label": rng.integers(0, 3, 6).astype(np.int32),
  }
  loss = dl.trust.grads.example_loss(model, state)
  per_example = dl.trust.grads.per_example_grads(loss, state.params, batch)
  assert per_example["Dense_0"]["kernel"].shape == (6, 4, 8)

  def batch_loss(params):
    logits = model.apply({"params": params}, batch["input"])
    return dl.core.objectives.cross_entropy(logits, batch["label"]).mean()

  chex.assert_trees_all_close(
    jax.tree.map(lambda g: jnp.mean(g, axis=0), per_example),
    jax.grad(batch_loss)(state.params),
    rtol=1e-5,
    atol=1e-6,
  )
  # Each example's gradient is its own: they differ.
  assert not np.allclose(per_example["Dense_0"]["bias"][0], per_example["Dense_0"]["bias"][1])


def test_a_member_differs_from_its_separate_run_by_the_batched_matmuls_rounding_only():
  """Why an ensemble member ends near, not at, its separate run: members run one after the
  other in one program (`jax.lax.map`) equal the separate runs bit for bit, so init, batches
  and dropout keys are the same; `jax.vmap` (what `dl.fit` runs) batches the matmuls, which
  sum in another order: about one ulp after the first step, then grown by Adam's normalised
  updates (7e-7 after 100 steps here; the bound leaves room for other CPUs)."""

  class TwoInputs(nn.Module):
    @nn.compact
    def __call__(self, a, b, train=False):
      h = nn.relu(nn.Dense(32)(a)) + nn.relu(nn.Dense(32)(b))
      return nn.Dense(10)(nn.Dropout(0.3, deterministic=not train)(h))

  digits = load_digits()
  x, y = (digits.data / 16).astype(np.float32), digits.target.astype(np.int32)
  task = dl.task(
    model=dl.Linen(TwoInputs(), inputs=("a", "b")),
    objective=dl.core.objectives.classification,
    optimizer=optax.adam(1e-2),
    train={"a": x[:, :32], "b": x[:, 32:], "label": y},
  )
  members, steps = 4, 100
  streams = [task.batches(32, seed=i) for i in range(members)]
  batches = [[stream.next() for _ in range(steps)] for stream in streams]
  one = jax.jit(task.step)
  alone = {1: [], steps: []}
  for i in range(members):
    state = task.init(i)
    for k, batch in enumerate(batches[i], 1):
      state, _ = one(state, batch)
      if k in alone:
        alone[k].append(state.params)

  def stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)

  def gap(ensemble, separate):
    return max(
      float(jnp.max(jnp.abs(a - b)))
      for a, b in zip(jax.tree.leaves(ensemble), jax.tree.leaves(stack(separate)))
    )

  in_turn = jax.jit(lambda s, b: jax.lax.map(lambda sb: task.step(*sb), (s, b)))
  gaps = {}
  for name, step in (("vmap", jax.jit(jax.vmap(task.step))), ("lax.map", in_turn)):
    state = stack([task.init(i) for i in range(members)])
    for k in range(1, steps + 1):
      state, _ = step(state, stack([batches[i][k - 1] for i in range(members)]))
      if k in alone:
        gaps[name, k] = gap(state.params, alone[k])
  assert gaps["lax.map", 1] == gaps["lax.map", steps] == 0.0, gaps
  assert 0.0 < gaps["vmap", 1] < 1e-6, gaps  # parameters of size ~0.1-1: a few ulps
  assert gaps["vmap", steps] < 1e-4, gaps
