import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dl
from dl import models
from dl.apps import decoding
from dl.models.decoder import DecoderLM

VOCAB = 24
TINY = dict(num_classes=VOCAB, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64)
# Megatron-style tensor parallel over ("data", "fsdp", "model"), as dl maps the names.
RULES = dl.core.parallel.LOGICAL_RULES


def _ids(shape, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 1, VOCAB)


def _params(model, ids_BxL):
  return nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), ids_BxL))["params"]


def _apply(model):
  return jax.jit(functools.partial(model.apply, mutable=False), static_argnames="train")


def _loss(model, ids_BxL):
  """Mean next-token cross-entropy of `model` on `ids_BxL`, as a function of the params."""

  def loss(params):
    logits_BxLxV = model.apply({"params": params}, ids_BxL)
    labels_BxL = jnp.roll(ids_BxL, -1, axis=1)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, labels_BxL).mean()

  return loss


def test_shapes_dtypes_and_tied_embeddings():
  model = models.create("decoder_lm", max_len=16, **TINY)
  ids_BxL = _ids((3, 10))
  params = _params(model, ids_BxL)
  logits_BxLxV = _apply(model)({"params": params}, ids_BxL)
  chex.assert_shape(logits_BxLxV, (3, 10, VOCAB))
  assert logits_BxLxV.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  tied = model.clone(tie_embeddings=True)
  tied_params = _params(tied, ids_BxL)
  assert "logits" in params and "logits" not in tied_params
  chex.assert_shape(_apply(tied)({"params": tied_params}, ids_BxL), (3, 10, VOCAB))


def test_is_causal_and_drops_out_only_in_training():
  model = DecoderLM(max_len=16, dropout=0.5, **TINY)
  apply = _apply(model)
  ids_BxL = np.asarray(_ids((2, 10)))
  variables = {"params": _params(model, ids_BxL)}
  logits_BxLxV = apply(variables, ids_BxL)
  changed_BxL = ids_BxL.copy()
  changed_BxL[:, 6:] = (changed_BxL[:, 6:] % (VOCAB - 1)) + 1  # every future token differs
  changed_BxLxV = apply(variables, changed_BxL)
  np.testing.assert_allclose(changed_BxLxV[:, :6], logits_BxLxV[:, :6], atol=1e-5)
  assert not np.allclose(changed_BxLxV[:, 6:], logits_BxLxV[:, 6:], atol=1e-4)
  a = apply(variables, ids_BxL, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  b = apply(variables, ids_BxL, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(apply(variables, ids_BxL), logits_BxLxV)


@pytest.mark.parametrize("num_kv_heads", [2])  # other groupings: the GQA test below
def test_cached_decoding_equals_the_full_forward(num_kv_heads):
  model = DecoderLM(**{**TINY, "num_kv_heads": num_kv_heads}, max_len=16, dropout=0.1)
  ids_BxT = _ids((2, 12))
  params = _params(model, ids_BxT)
  full_BxTxV = _apply(model)({"params": params}, ids_BxT)
  decoder = model.clone(decode=True, dropout=0.0)
  cache = decoding.init_cache(decoder, ids_BxT)
  step = jax.jit(functools.partial(decoder.apply, mutable=["cache"]))
  steps = []
  for t in range(ids_BxT.shape[1]):
    logits_Bx1xV, mutated = step({"params": params, "cache": cache}, ids_BxT[:, t : t + 1])
    cache = mutated["cache"]
    steps.append(logits_Bx1xV)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full_BxTxV, atol=1e-5)
  # A prompt can also fill the cache in one call (causal within the chunk).
  empty = decoding.init_cache(decoder, ids_BxT)
  chunk_BxPxV, mutated = step({"params": params, "cache": empty}, ids_BxT[:, :5])
  np.testing.assert_allclose(chunk_BxPxV, full_BxTxV[:, :5], atol=1e-5)
  next_Bx1xV, _ = step({"params": params, "cache": mutated["cache"]}, ids_BxT[:, 5:6])
  np.testing.assert_allclose(next_Bx1xV, full_BxTxV[:, 5:6], atol=1e-5)
  # dl.apps.decoding drives the same cache: greedy tokens agree with the uncached reference.
  kwargs = dict(model=model, num_tokens=9, temperature=0.0)
  cached = jax.jit(functools.partial(decoding.sample, **kwargs))
  uncached = jax.jit(functools.partial(decoding.sample_uncached, **kwargs))
  prompt_BxP = ids_BxT[:, :3]
  tokens_BxT = cached(params, prompt_BxP, jax.random.PRNGKey(0))
  chex.assert_shape(tokens_BxT, (2, 12))
  np.testing.assert_array_equal(tokens_BxT, uncached(params, prompt_BxP, jax.random.PRNGKey(0)))


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_grouped_query_attention_shares_each_kv_head_with_its_group(num_kv_heads):
  # GQA is MHA whose k and v kernels repeat each kv head for the group of query heads using it.
  grouped = DecoderLM(**{**TINY, "num_kv_heads": num_kv_heads}, max_len=16)
  full = grouped.clone(num_kv_heads=grouped.num_heads)
  ids_BxL = _ids((2, 8))
  params = _params(grouped, ids_BxL)
  group = grouped.num_heads // num_kv_heads
  chex.assert_shape(params["block_0"]["attn"]["k"]["kernel"], (32, num_kv_heads, 8))

  def repeat(path, x):
    is_kv = any(getattr(key, "key", None) in ("k", "v") for key in path)
    return jnp.repeat(x, group, axis=1) if is_kv else x

  repeated = jax.tree_util.tree_map_with_path(repeat, params)
  np.testing.assert_allclose(
    _apply(grouped)({"params": params}, ids_BxL),
    _apply(full)({"params": repeated}, ids_BxL),
    atol=1e-5,
  )


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_keeps_params_and_gradients_and_saves_fewer_residuals(policy):
  model = DecoderLM(max_len=16, **TINY)
  rematted = model.clone(remat=policy)
  ids_BxL = _ids((2, 16))
  params = _params(model, ids_BxL)
  chex.assert_trees_all_equal(_params(rematted, ids_BxL), params)
  grads = jax.jit(jax.grad(_loss(model, ids_BxL)))(params)
  remat_grads = jax.jit(jax.grad(_loss(rematted, ids_BxL)))(params)
  chex.assert_trees_all_close(remat_grads, grads, atol=1e-6)

  # The leaves of the VJP closure are what the forward pass keeps for the backward pass.
  def residuals(m):
    vjp_fn = jax.eval_shape(lambda p: jax.vjp(_loss(m, ids_BxL), p)[1], params)
    return len(jax.tree.leaves(vjp_fn))

  assert residuals(rematted) < residuals(model)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = DecoderLM(max_len=16, **TINY)
  half = model.clone(dtype=jnp.bfloat16)
  ids_BxL = _ids((2, 10))
  params = _params(half, ids_BxL)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits_BxLxV = _apply(half)({"params": params}, ids_BxL)
  assert logits_BxLxV.dtype == jnp.float32
  np.testing.assert_allclose(
    logits_BxLxV, _apply(model)({"params": params}, ids_BxL), atol=0.1, rtol=0.05
  )


def test_axes_name_every_kernel_for_tensor_parallelism():
  model = DecoderLM(max_len=16, **{**TINY, "depth": 1})
  axes = dl.Linen(model).axes({"input": _ids((2, 8))})
  assert axes == {
    "embed/embedding": ("vocab", "embed"),
    "block_0/attn_norm/scale": ("norm",),
    "block_0/attn/q/kernel": ("embed", "heads", "head_dim"),
    "block_0/attn/k/kernel": ("embed", "kv_heads", "head_dim"),
    "block_0/attn/v/kernel": ("embed", "kv_heads", "head_dim"),
    "block_0/attn/out/kernel": ("heads", "head_dim", "embed"),
    "block_0/mlp_norm/scale": ("norm",),
    "block_0/mlp/gate/kernel": ("embed", "mlp"),
    "block_0/mlp/up/kernel": ("embed", "mlp"),
    "block_0/mlp/down/kernel": ("mlp", "embed"),
    "final_norm/scale": ("norm",),
    "logits/kernel": ("embed", "vocab"),
  }


def test_activations_are_constrained_under_a_mesh_and_results_do_not_change():
  model = DecoderLM(max_len=16, **TINY)
  ids_BxL = _ids((4, 8))
  init = jax.jit(dl.Linen(model).init)
  params, _ = init(jax.random.PRNGKey(0), {"input": ids_BxL})
  apply = jax.jit(lambda p, ids: model.apply({"params": p}, ids))
  expected_BxLxV = apply(params, ids_BxL)
  assert "sharding_constraint" not in apply.lower(params, ids_BxL).as_text()
  axis_types = (jax.sharding.AxisType.Auto,) * 3
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "model"), axis_types=axis_types)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    meshed_params, _ = init(jax.random.PRNGKey(0), {"input": ids_BxL})
    text = apply.lower(params, ids_BxL).as_text()
    logits_BxLxV = apply(params, ids_BxL)
  chex.assert_trees_all_close(meshed_params, params)
  np.testing.assert_allclose(logits_BxLxV, expected_BxLxV, atol=1e-5)
  assert logits_BxLxV.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, "model")
  batch = '{"data", "fsdp"}, {}'
  constraints = [line for line in text.splitlines() if "sharding_constraint" in line]
  expected = {
    "residual": (f"[{batch}, {{}}]> : tensor<4x8x32xf32>", 1 + 2 * model.depth),
    "queries, attention out": (f'[{batch}, {{"model"}}, {{}}]> : tensor<4x8x4x8xf32>', 4),
    "keys, values": (f'[{batch}, {{"model"}}, {{}}]> : tensor<4x8x2x8xf32>', 4),
    "mlp hidden": (f'[{batch}, {{"model"}}]> : tensor<4x8x64xf32>', 2),
    "logits": (f'[{batch}, {{"model"}}]> : tensor<4x8x24xf32>', 1),
  }
  for what, (spec, count) in expected.items():
    assert sum(spec in line for line in constraints) == count, (what, spec, constraints)
  assert len(constraints) == sum(count for _, count in expected.values())


def test_train_flops_match_xla_cost_analysis():
  model = DecoderLM(
    num_classes=256, width=256, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=1024, max_len=128
  )
  ids_BxL = jnp.ones((8, 128), jnp.int32)
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), ids_BxL))["params"]
  optimizer = optax.sgd(0.1)

  def train_step(params, opt_state, ids_BxL):
    loss, grads = jax.value_and_grad(_loss(model, ids_BxL))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = jax.eval_shape(optimizer.init, params)
  compiled = jax.jit(train_step).lower(params, opt_state, ids_BxL).compile()
  xla_flops = compiled.cost_analysis()["flops"]
  flops = model.train_flops(ids_BxL.shape)
  assert abs(flops / xla_flops - 1) < 0.05, (flops, xla_flops)
  # XLA computes the masked upper triangle too: counting only half of the attention products
  # (L * (L + 1) / 2 pairs) lands farther from its count than counting all L * L.
  attention = 12 * 8 * 128 * 128 * model.num_heads * (model.width // model.num_heads) * 2
  assert abs(flops - xla_flops) < abs(flops - attention / 2 - xla_flops)


def test_rejects_bad_inputs_and_shapes():
  ids_BxL = _ids((2, 8))
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    DecoderLM(**{**TINY, "num_kv_heads": 3}).init(jax.random.PRNGKey(0), ids_BxL)
  with pytest.raises(ValueError, match="even head width"):
    DecoderLM(**{**TINY, "width": 36}).init(jax.random.PRNGKey(0), ids_BxL)
  with pytest.raises(ValueError, match="exceeds max_len=4"):
    DecoderLM(**TINY, max_len=4).init(jax.random.PRNGKey(0), ids_BxL)
  with pytest.raises(ValueError, match="integer token ids"):
    DecoderLM(**TINY).init(jax.random.PRNGKey(0), ids_BxL.astype(jnp.float32))
  with pytest.raises(ValueError, match="remat policy"):
    DecoderLM(**TINY, remat="some").init(jax.random.PRNGKey(0), ids_BxL)
