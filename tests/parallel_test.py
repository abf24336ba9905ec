"""One pure step, four ways of compiling it: the same numbers on 8 fake CPU devices."""

import functools

import chex
import jax
import numpy as np
import optax
import pytest

import dl
from dl import models, parallel

NUM_STEPS = 20


def _problem():
  model = models.CNN(num_classes=10, features=8, hidden=64)
  tx = optax.adamw(1e-2, weight_decay=1e-4)
  state = dl.create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 1))
  rng = np.random.default_rng(0)
  batches = [
    {
      "input": rng.normal(size=(32, 8, 8, 1)).astype(np.float32),
      "label": rng.integers(0, 10, 32).astype(np.int32),
    }
    for _ in range(NUM_STEPS)
  ]
  return model, tx, state, batches


def _run_jit():
  model, tx, state, batches = _problem()
  step = dl.jit_step(functools.partial(dl.train_step, apply_fn=model.apply, tx=tx))
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(metrics["loss"])
  return state, np.array(losses)


def _run_pmap():
  model, tx, state, batches = _problem()
  n = jax.local_device_count()
  step = dl.compile.pmap_step(functools.partial(dl.train_step, apply_fn=model.apply, tx=tx))
  state = parallel.replicate(state)
  losses = []
  for batch in batches:
    state, metrics = step(state, parallel.shard_for_pmap(batch, n))
    losses.append(metrics["loss"][0])
  return parallel.unreplicate(state), np.array(losses)


def _run_mesh(mode):
  model, tx, state, batches = _problem()
  mesh = parallel.make_mesh(mode)
  shardings = parallel.state_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  batch_sharding = parallel.batch_sharding(mesh)
  step = dl.compile.mesh_step(
    functools.partial(dl.train_step, apply_fn=model.apply, tx=tx), shardings, batch_sharding
  )
  losses = []
  for batch in batches:
    state, metrics = step(state, parallel.global_batch(batch, batch_sharding))
    losses.append(metrics["loss"])
  return state, np.array(losses)


@pytest.fixture(scope="module")
def reference():
  return _run_jit()


@pytest.mark.parametrize(
  "run",
  [_run_pmap, functools.partial(_run_mesh, "data"), functools.partial(_run_mesh, "fsdp")],
  ids=["pmap", "mesh_data", "mesh_fsdp"],
)
def test_same_loss_and_params_as_one_device(reference, run):
  assert jax.device_count() == 8
  ref_state, ref_losses = reference
  state, losses = run()
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  chex.assert_trees_all_close(
    jax.device_get(state.params), jax.device_get(ref_state.params), rtol=1e-5, atol=1e-6
  )


def test_fsdp_really_shards_params_and_optimizer_state():
  model, tx, state, _ = _problem()
  mesh = parallel.make_mesh("fsdp")
  state = jax.device_put(state, parallel.state_shardings(state, mesh))
  kernel = state.params["Dense_0"]["kernel"]  # (2 * 2 * 16, 64)
  assert kernel.shape == (64, 64)
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp")
  assert {s.data.shape for s in kernel.addressable_shards} == {(8, 64)}
  mu = state.opt_state[0].mu["Dense_0"]["kernel"]
  assert {s.data.shape for s in mu.addressable_shards} == {(8, 64)}
  bias = state.params["Dense_0"]["bias"]  # small: replicated
  assert bias.sharding.is_fully_replicated


def collective_counts(mode):
  """Counts collectives in the compiled (optimised) HLO of one mesh train step."""
  model, tx, state, batches = _problem()
  mesh = parallel.make_mesh(mode)
  shardings = parallel.state_shardings(state, mesh)
  batch_sharding = parallel.batch_sharding(mesh)
  step = dl.compile.mesh_step(
    functools.partial(dl.train_step, apply_fn=model.apply, tx=tx), shardings, batch_sharding
  )
  hlo = step.lower(state, batches[0]).compile().as_text()
  return {
    op: hlo.count(f" {op}(") + hlo.count(f" {op}-start(")
    for op in ("all-reduce", "all-gather", "reduce-scatter")
  }


def test_collectives_match_the_layout():
  data, fsdp = collective_counts("data"), collective_counts("fsdp")
  print(f"collectives per step: data parallel {data}, fsdp {fsdp}")
  assert data["all-reduce"] > 0 and data["all-gather"] == 0  # replicated params: reduce grads
  assert fsdp["all-gather"] > 0  # sharded params are gathered for the forward pass
