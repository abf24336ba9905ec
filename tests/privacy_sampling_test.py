"""Poisson sampling for DP-SGD: the draws' statistics, padding that adds nothing, exact resume."""

import functools
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats
from tiny_config import tiny_config

import dl
from dl import models
from dl.trust import privacy

MODEL = models.MLP(num_classes=3, width=8, depth=1)
CONFIG = __file__.replace("privacy_sampling_test.py", "tiny_config.py")


def _arrays(n, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "input": (3.0 * rng.normal(size=(n, 4))).astype(np.float32),
    "label": rng.integers(0, 3, n).astype(np.int32),
    "id": np.arange(n),
  }


def test_inclusion_frequency_is_q_and_batch_sizes_are_binomial():
  n, q, steps = 200, 0.1, 3000
  batches = privacy.PoissonBatches(_arrays(n), sampling_rate=q, max_batch_size=64, seed=3)
  counts, sizes = np.zeros(n), []
  for _ in range(steps):
    batch = batches.next()
    real = batch["id"][batch["mask"] > 0]
    assert len(set(real)) == len(real)  # no example twice in a batch
    counts[real] += 1
    sizes.append(len(real))
  # P(Bin(200, 0.1) > 64) ~ 1e-17: nothing was truncated, the draws are plain Poisson.
  # Each example's count is Binomial(steps, q), independently: the standardised squares sum
  # to chi-square with n degrees of freedom.
  z = (counts - steps * q) / np.sqrt(steps * q * (1 - q))
  assert stats.chi2.sf(np.sum(z**2), n) > 1e-3
  assert abs(counts.sum() - n * steps * q) < 4 * np.sqrt(n * steps * q * (1 - q))
  # Batch sizes against Binomial(n, q): chi-square goodness of fit over 8 bins.
  edges = [-1, 14, 16, 18, 20, 22, 24, 26, n]
  expected = np.diff(stats.binom.cdf(edges, n, q)) * steps
  observed = np.histogram(sizes, bins=np.array(edges) + 0.5)[0]
  assert observed.sum() == steps
  assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_overflow_keeps_a_random_subset_and_the_position_is_one_integer():
  arrays = _arrays(100)
  batches = privacy.PoissonBatches(arrays, sampling_rate=0.5, max_batch_size=40, seed=0)
  assert privacy.overflow_probability(100, 0.5, 40) == pytest.approx(stats.binom.sf(40, 100, 0.5))
  first = [batches.next() for _ in range(5)]
  assert all(b["mask"].sum() == 40 for b in first)  # ~50 drawn each time, 40 kept
  state = batches.get_state()
  after = [batches.next() for _ in range(3)]
  again = privacy.PoissonBatches(arrays, sampling_rate=0.5, max_batch_size=40, seed=0)
  again.set_state(state)
  for a, b in zip(after, [again.next() for _ in range(3)], strict=True):
    chex.assert_trees_all_equal(a, b)
  # Another seed draws other batches.
  other = privacy.PoissonBatches(arrays, sampling_rate=0.5, max_batch_size=40, seed=1).next()
  assert not np.array_equal(other["id"], first[0]["id"])


def test_max_batch_size_bounds_the_runs_overflow():
  n, q, steps = 1293, 64 / 1293, 600
  size = privacy.max_batch_size(n, q, steps, multiple=8)
  assert size % 8 == 0
  assert steps * privacy.overflow_probability(n, q, size) <= 0.01
  assert steps * privacy.overflow_probability(n, q, size - 8) > 0.01  # the smallest such


def test_accumulation_and_processes_split_one_logical_draw():
  arrays = _arrays(300)
  whole = privacy.PoissonBatches(arrays, sampling_rate=0.2, max_batch_size=96, seed=5)
  logical = whole.next()
  parts = [
    privacy.PoissonBatches(
      arrays,
      sampling_rate=0.2,
      max_batch_size=96,
      seed=5,
      accum_steps=2,
      shard_index=i,
      num_shards=2,
    ).next(2)
    for i in range(2)
  ]
  # micro-batch j of process i holds rows [48 j + 24 i, 48 j + 24 (i + 1)) of the logical draw.
  for key in ("id", "mask"):
    rebuilt = np.concatenate([parts[i][key][j] for j in range(2) for i in range(2)])
    np.testing.assert_array_equal(rebuilt, logical[key])


@functools.cache
def _steps():
  tx = optax.sgd(0.5)
  state = dl.create_train_state(MODEL, tx, jax.random.PRNGKey(0), (4,))
  step = functools.partial(
    privacy.dp_train_step, model=MODEL, tx=tx, l2_clip=0.7, noise_multiplier=0.0
  )
  return state, jax.jit(step, static_argnames="expected_batch_size")


def test_padding_adds_nothing_and_the_update_is_optax_dpsgds():
  state, step = _steps()
  real = {k: v for k, v in _arrays(13).items() if k != "id"}
  padded = {k: np.concatenate([v, v[:7] * 0 + v[:7]]) for k, v in real.items()}
  padded["mask"] = np.r_[np.ones(13), np.zeros(7)].astype(np.float32)
  # Padded rows (copies of real ones here, so that they would count if not masked) add nothing.
  alone, metrics = step(state, real, expected_batch_size=10.0)
  masked, masked_metrics = step(state, padded, expected_batch_size=10.0)
  chex.assert_trees_all_close(alone.params, masked.params, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(metrics, masked_metrics, rtol=1e-6)
  # Without an expected size the sum is divided by the real examples: optax's DP-SGD (noise
  # off) on the same per-example gradients gives the same update.
  ours, _ = step(state, padded)
  grads_B = jax.vmap(
    lambda x, y: jax.grad(
      lambda p: optax.softmax_cross_entropy_with_integer_labels(
        MODEL.apply({"params": p}, x[None]), y[None]
      ).sum()
    )(state.params)
  )(jnp.asarray(real["input"]), jnp.asarray(real["label"]))
  tx = optax.contrib.dpsgd(learning_rate=0.5, l2_norm_clip=0.7, noise_multiplier=0.0, seed=0)
  updates, _ = tx.update(grads_B, tx.init(state.params), state.params)
  chex.assert_trees_all_close(
    ours.params, optax.apply_updates(state.params, updates), rtol=1e-5, atol=1e-6
  )


def test_dp_run_on_poisson_batches_resumes_bit_identically_after_kill(tmp_path):
  import kill

  overrides = [
    "--config.dp_noise_multiplier=1.0",
    "--config.fit.num_steps=120",
    "--config.fit.checkpoint_every=20",
    "--config.fit.log_every=60",
    "--config.fit.eval_every=60",
  ]

  def command(workdir):
    return [
      sys.executable,
      "-m",
      "dl.cli.train",
      f"--config={CONFIG}",
      f"--workdir={workdir}",
      *overrides,
    ]

  config = tiny_config(
    dp_noise_multiplier=1.0,
    num_steps=120,
    checkpoint_every=20,
    log_every=60,
    eval_every=60,
  )
  # Resumed in this process: what the command runs (tests/trainer_test.py reruns the CLI itself).
  resume = functools.partial(dl.train, config, str(tmp_path / "killed"))
  killed_at = kill.kill_then_rerun(
    command(tmp_path / "killed"), tmp_path / "killed", 40, resume=resume
  )
  assert killed_at < 120
  full, _ = dl.train(config, str(tmp_path / "full"))  # in this process: the same program
  resumed = dl.restore(config, str(tmp_path / "killed"), step=None)
  assert int(resumed.step) == 120
  chex.assert_trees_all_equal(full, resumed)
