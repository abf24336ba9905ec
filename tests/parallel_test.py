"""One pure step, four ways of compiling it: the same numbers on 8 fake CPU devices."""

import functools

import chex
import jax
import numpy as np
import optax
import pytest

import dl
from dl import models
from dl.core import parallel

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
  step = dl.jit_step(functools.partial(dl.train_step, model=model, tx=tx))
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(metrics["loss"])
  return state, np.array(losses)


def _run_pmap():
  model, tx, state, batches = _problem()
  n = jax.local_device_count()
  step = dl.training.compile.pmap_step(functools.partial(dl.train_step, model=model, tx=tx))
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
  step = dl.training.compile.mesh_step(
    functools.partial(dl.train_step, model=model, tx=tx), shardings, batch_sharding
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
  step = dl.training.compile.mesh_step(
    functools.partial(dl.train_step, model=model, tx=tx), shardings, batch_sharding
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


def _mlp_config(**overrides):
  from tiny_config import tiny_config

  return tiny_config(model={"name": "mlp", "width": 64, "depth": 1}, **overrides)


@pytest.mark.parametrize("mode", ["pmap", "data", "fsdp"])
def test_trainer_modes_match_jit(tmp_path, mode):
  ref, ref_history = dl.train(_mlp_config(steps_per_dispatch=5), str(tmp_path / "jit"))
  state, history = dl.train(_mlp_config(parallel=mode, steps_per_dispatch=5), str(tmp_path / mode))
  chex.assert_trees_all_close(
    jax.device_get(state.params), jax.device_get(ref.params), rtol=1e-5, atol=1e-6
  )
  assert history["eval"][-1]["accuracy"] == ref_history["eval"][-1]["accuracy"]


def test_checkpoint_moves_between_topologies(tmp_path):
  """Saved by an 8-device FSDP run; restored onto 1 device and onto a 2x4 mesh."""
  state, _ = dl.train(_mlp_config(parallel="fsdp"), str(tmp_path))
  saved = jax.device_get(state.params)
  assert {s.data.shape for s in state.params["Dense_0"]["kernel"].addressable_shards} == {(8, 64)}

  single = dl.restore(_mlp_config(parallel="jit"), str(tmp_path), step=None)
  assert len(single.params["Dense_0"]["kernel"].devices()) == 1
  chex.assert_trees_all_equal(jax.device_get(single.params), saved)

  mesh_2x4 = dl.restore(
    _mlp_config(parallel="fsdp", mesh_shape="data=2,fsdp=4"), str(tmp_path), step=None
  )
  kernel = mesh_2x4.params["Dense_0"]["kernel"]
  assert {s.data.shape for s in kernel.addressable_shards} == {(16, 64)}
  assert len(kernel.devices()) == 8
  chex.assert_trees_all_equal(jax.device_get(mesh_2x4.params), saved)


@pytest.mark.parametrize("mode", ["jit", "pmap", "data", "fsdp"])
def test_bf16_compute_keeps_float32_params_in_every_mode(tmp_path, mode):
  state, history = dl.train(
    _mlp_config(compute_dtype="bfloat16", parallel=mode, grad_accum_steps=2), str(tmp_path)
  )
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  floats = [
    x for x in jax.tree.leaves(state.opt_state) if jax.numpy.issubdtype(x.dtype, np.floating)
  ]
  assert floats and all(x.dtype == np.float32 for x in floats)
  assert history["eval"][-1]["accuracy"] > 0.5


def test_batch_not_divisible_by_devices_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"batch_size \(30\) must be divisible by the 8 devices"):
    dl.train(_mlp_config(parallel="data", batch_size=30), str(tmp_path))


@pytest.mark.parametrize("mode", ["jit", "pmap", "data", "fsdp"])
def test_gradient_accumulation_composes_with_every_mode(tmp_path, mode):
  """optax.MultiSteps: 2 micro-batches of 16 per update equal 1 batch of 32 per update.

  Within the first epoch the two micro-batches hold exactly the 32 examples of the big batch.
  """
  big, _ = dl.train(_mlp_config(batch_size=32, num_steps=20), str(tmp_path / "big"))
  accumulated, _ = dl.train(
    _mlp_config(parallel=mode, batch_size=16, grad_accum_steps=2, num_steps=40),
    str(tmp_path / "accumulated"),
  )
  assert int(np.ravel(jax.device_get(accumulated.step))[0]) == 40
  assert int(np.ravel(jax.device_get(accumulated.opt_state.gradient_step))[0]) == 20
  chex.assert_trees_all_close(
    jax.device_get(accumulated.params), jax.device_get(big.params), rtol=1e-5, atol=1e-5
  )
