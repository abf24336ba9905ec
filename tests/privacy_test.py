"""DP-SGD: clipping bounds each example, noise is drawn once per logical batch, the accountants."""

import functools

import chex
import dp_accounting
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting import pld, rdp
from tiny_config import tiny_config

import dl
from dl import models
from dl.trust import privacy

MODEL = models.MLP(num_classes=3, width=8, depth=1)


def _inputs(num, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "input": (3.0 * rng.normal(size=(num, 4))).astype(np.float32),
    "label": rng.integers(0, 3, num).astype(np.int32),
  }


def _state(tx):
  return dl.create_train_state(MODEL, tx, jax.random.PRNGKey(0), (4,))


def _step(tx, **kw):
  return functools.partial(privacy.dp_train_step, model=MODEL, tx=tx, **kw)


def _norms(tree_N):
  """(N,) L2 norms of the N trees stacked on the leading axis of `tree_N`."""
  squares = [jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1) for x in jax.tree.leaves(tree_N)]
  return np.sqrt(np.sum(squares, axis=0))


def test_clipping_bounds_every_per_example_gradient():
  # With SGD at learning rate 1 and no noise, a one-example step moves params by its clipped grad.
  tx = optax.sgd(1.0)
  state = _state(tx)
  examples = jax.tree.map(lambda x: x[:, None], _inputs(64))  # 64 batches of 1

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(None, 0))
  def moved(clip, batch):
    step = _step(tx, l2_clip=clip, noise_multiplier=0.0)
    return jax.tree.map(jnp.subtract, state.params, step(state, batch)[0].params)

  raw_N = _norms(moved(1e6, examples))
  clip = float(np.quantile(raw_N, 0.7))
  clipped_N = _norms(moved(clip, examples))
  assert np.all(clipped_N <= clip * (1 + 1e-5))
  big = raw_N > clip
  assert big.sum() >= 10 and (~big).sum() >= 1  # both cases occur
  np.testing.assert_allclose(clipped_N[big], clip, rtol=1e-5)
  np.testing.assert_allclose(clipped_N[~big], raw_N[~big], rtol=1e-5)


def test_one_example_moves_the_batch_gradient_by_at_most_the_clip():
  tx, clip = optax.sgd(1.0), 0.3
  state, batch = _state(tx), _inputs(16)
  step = jax.jit(_step(tx, l2_clip=clip, noise_multiplier=0.0))
  full = step(state, batch)[0].params
  without_last = step(state, jax.tree.map(lambda x: x[:-1], batch))[0].params
  # Sums of clipped gradients (before dividing by B) differ by one clipped gradient.
  sum_full = jax.tree.map(lambda p, q: 16 * (p - q), state.params, full)
  sum_less = jax.tree.map(lambda p, q: 15 * (p - q), state.params, without_last)
  diff = jax.tree.map(lambda a, b: (a - b)[None], sum_full, sum_less)
  assert 0 < _norms(diff)[0] <= clip * (1 + 1e-4)


@functools.cache
def _one_logical_batch(accum_steps, micro_batch):
  """Jitted (sigma, rngs (S,)) -> params after one logical batch of k micro-batches, per rng."""
  tx = optax.sgd(1.0)
  if accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum_steps)
  state = _state(tx)
  batches = jax.tree.map(
    lambda x: x.reshape(accum_steps, micro_batch, *x.shape[1:]), _inputs(accum_steps * micro_batch)
  )

  def run(sigma, rng):
    step = _step(tx, l2_clip=0.5, noise_multiplier=sigma, accum_steps=accum_steps)
    final, _ = jax.lax.scan(step, state.replace(rng=rng), batches)
    return final.params

  return jax.jit(jax.vmap(run, in_axes=(None, 0)))


def test_accumulation_adds_the_noise_of_one_large_batch():
  sigma, clip = 1.3, 0.5
  rngs = jax.random.split(jax.random.PRNGKey(1), 400)
  stds, clean = {}, {}
  for k, micro in ((1, 32), (4, 8)):
    run = _one_logical_batch(k, micro)
    clean[k], noisy = run(0.0, rngs), run(sigma, rngs)
    noise = np.concatenate(
      [np.ravel(a - b) for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(clean[k]))]
    )
    stds[k] = np.std(noise) * 32  # noise on the mean gradient, times the logical batch
    assert abs(np.mean(noise) * 32) < 0.05 * sigma * clip  # centred
  # Without noise, 4 micro-batches of 8 give exactly the update of one batch of 32.
  chex.assert_trees_all_close(clean[1], clean[4], rtol=1e-5, atol=1e-6)
  # 400 seeds x 67 parameters: the std is estimated to about 0.5%. Noise added on every
  # micro-batch instead would give 2x (sqrt(4)) the std.
  assert stds[1] == pytest.approx(sigma * clip, rel=0.03)
  assert stds[4] == pytest.approx(sigma * clip, rel=0.03)
  assert stds[4] == pytest.approx(stds[1], rel=0.04)


def _accountant_epsilon(event, steps, delta, accountant):
  accountant.compose(event, steps)
  return accountant.get_epsilon(delta)


def _poisson(q, sigma):
  return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))


@pytest.mark.parametrize("q,sigma,steps", [(0.01, 1.1, 1000), (32 / 1437, 0.7, 450), (1.0, 5.0, 3)])
def test_epsilon_is_dp_accountings(q, sigma, steps):
  rdp_eps = privacy.epsilon(q, sigma, steps, 1e-5, accountant_name="rdp")
  assert rdp_eps == _accountant_epsilon(_poisson(q, sigma), steps, 1e-5, rdp.RdpAccountant())
  pld_eps = privacy.epsilon(q, sigma, steps, 1e-5)  # dl's default: PLD on a 1e-3 grid
  grid = pld.PLDAccountant(value_discretization_interval=1e-3)
  assert pld_eps == pytest.approx(_accountant_epsilon(_poisson(q, sigma), steps, 1e-5, grid), 1e-9)
  # PLD is tighter than RDP, and the coarse grid stays within 1e-3 of the default one.
  fine = _accountant_epsilon(_poisson(q, sigma), steps, 1e-5, pld.PLDAccountant())
  assert fine <= pld_eps <= fine + 1e-3
  assert 0.5 * rdp_eps < pld_eps <= rdp_eps * 1.001


def test_truncated_poisson_epsilon_is_dp_accountings_and_rdp_refuses_it():
  n, q, b, sigma = 1293, 64 / 1293, 104, 1.0
  ours = privacy.epsilon(q, sigma, 600, 1e-5, num_examples=n, max_batch_size=b)
  event = dp_accounting.TruncatedSubsampledGaussianDpEvent(n, q, b, sigma)
  grid = pld.PLDAccountant(value_discretization_interval=1e-3)
  assert ours == pytest.approx(_accountant_epsilon(event, 600, 1e-5, grid), rel=1e-9)
  # Truncation far in the tail costs (almost) nothing over plain Poisson sampling.
  assert privacy.epsilon(q, sigma, 600, 1e-5) == pytest.approx(ours, rel=1e-3)
  # A batch truncated to its mean costs privacy: a kept example's weight in it grows.
  assert privacy.epsilon(q, sigma, 600, 1e-5, num_examples=n, max_batch_size=64) != ours
  with pytest.raises(ValueError, match="RDP accountant has no truncated Poisson event"):
    privacy.epsilon(q, sigma, 600, 1e-5, accountant_name="rdp", num_examples=n, max_batch_size=b)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibrated_noise_hits_its_target_epsilon(accountant):
  q, steps, delta = 256 / 60_000, 2000, 1e-5
  for target in (1.0, 4.0):
    sigma = privacy.calibrate_noise_multiplier(target, delta, q, steps, accountant_name=accountant)
    spent = privacy.epsilon(q, sigma, steps, delta, accountant_name=accountant)
    assert spent == pytest.approx(target, rel=0.01)
    assert spent <= target * (1 + 1e-3)  # at or just under the target
  # Truncated Poisson sampling (PLD only).
  if accountant == "pld":
    kw = {"num_examples": 1000, "max_batch_size": 80}
    sigma = privacy.calibrate_noise_multiplier(2.0, delta, 0.05, 200, **kw)
    assert privacy.epsilon(0.05, sigma, 200, delta, **kw) == pytest.approx(2.0, rel=0.01)


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
  assert privacy.epsilon(0.02, 1.0, 0, 1e-5) == 0.0
  assert privacy.epsilon(0.02, 1.0, 100, 1e-5) < privacy.epsilon(0.02, 1.0, 200, 1e-5)
  assert privacy.epsilon(0.02, 2.0, 100, 1e-5) < privacy.epsilon(0.02, 1.0, 100, 1e-5)
  with pytest.raises(ValueError, match=r"sampling_rate must be in \(0, 1\]; got 1.5"):
    privacy.epsilon(1.5, 1.0, 10, 1e-5)


def test_train_logs_the_accountants_epsilon_with_accumulation(tmp_path):
  accum = 2
  config = tiny_config(dp_noise_multiplier=1.0, grad_accum_steps=accum, steps_per_dispatch=10)
  _, history = dl.train(config, str(tmp_path))
  task = dl.build(config)
  n, b_max = len(task.train), task.train.max_batch_size
  assert isinstance(task.train, privacy.PoissonData) and b_max % (8 * accum) == 0
  epsilons = [r["epsilon"] for r in history["train"]]
  assert epsilons == sorted(epsilons) and epsilons[0] > 0
  last = history["train"][-1]
  event = dp_accounting.TruncatedSubsampledGaussianDpEvent(n, 32 * accum / n, b_max, 1.0)
  grid = pld.PLDAccountant(value_discretization_interval=1e-3)
  expected = _accountant_epsilon(event, last["step"] // accum, 1e-5, grid)
  assert last["epsilon"] == pytest.approx(expected, rel=1e-9)
  assert all(0.0 <= r["clipped"] <= 1.0 for r in history["train"])
  assert history["eval"][-1]["accuracy"] > 0.2  # learns despite the noise (chance: 0.1)


def test_shuffled_dp_batches_are_labelled_not_covered(tmp_path):
  config = tiny_config(dp_noise_multiplier=1.0, dp_sampling="shuffle", num_steps=10)
  _, history = dl.train(config, str(tmp_path))
  record = history["train"][-1]
  assert "epsilon" not in record and record["epsilon_if_poisson"] > 0
  assert isinstance(dl.build(config).train, dl.data.sources.InMemory)


def test_dp_rejects_batch_norm_and_bad_config():
  with pytest.raises(ValueError, match="dp_noise_multiplier must be a number >= 0; got -1.0"):
    dl.parse_config(tiny_config(dp_noise_multiplier=-1.0))
  with pytest.raises(ValueError, match=r"dp_delta must be in \(0, 1\); got 2.0"):
    dl.parse_config(tiny_config(dp_delta=2.0))
  with pytest.raises(ValueError, match="dp_sampling must be 'poisson' or 'shuffle'; got 'fixed'"):
    dl.parse_config(tiny_config(dp_sampling="fixed"))
  with pytest.raises(ValueError, match="dp_accountant must be 'pld' when dp_max_batch_size"):
    dl.parse_config(tiny_config(dp_accountant="rdp", dp_max_batch_size=64))
  tx = optax.sgd(0.1)

  class WithBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))

  model = WithBatchNorm()
  state = dl.create_train_state(model, tx, jax.random.PRNGKey(0), (4,))
  step = functools.partial(
    privacy.dp_train_step, model=model, tx=tx, l2_clip=1.0, noise_multiplier=1.0
  )
  batch = _inputs(2)
  with pytest.raises(ValueError, match=r"without batch statistics.*\['batch_stats'\]"):
    step(state, batch)


def test_dp_training_is_the_same_in_every_compile_mode_and_in_an_ensemble(tmp_path):
  # pmap: clipped sums are added over the 8 devices and every device adds the same noise once;
  # "data": the same step over a mesh. Poisson batches (padded, masked) are split over devices.
  params = {}
  for mode in ("jit", "pmap", "data"):
    config = tiny_config(dp_noise_multiplier=1.0, parallel=mode, num_steps=10)
    state, _ = dl.train(config, str(tmp_path / mode))
    params[mode] = jax.device_get(state.params)
  chex.assert_trees_all_close(params["jit"], params["pmap"], rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(params["jit"], params["data"], rtol=1e-4, atol=1e-5)
  # Member 1 of an ensemble (own seed: own init, noise and Poisson draws) is the run of seed 1.
  dp = {"dp_noise_multiplier": 1.0, "num_steps": 10}
  ensemble, _ = dl.train(tiny_config(ensemble_size=2, **dp), str(tmp_path / "ensemble"))
  alone, _ = dl.train(tiny_config(seed=1, **dp), str(tmp_path / "seed1"))
  member = jax.tree.map(lambda x: x[1], jax.device_get(ensemble.params))
  chex.assert_trees_all_close(member, jax.device_get(alone.params), rtol=1e-5, atol=1e-6)
