"""Logical axis names of dl's models: parameters (`Model.axes`), activation constraints, and
the MLP's analytic FLOPs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dl
from dl.models import MLP, ResNet, TransformerClassifier, TransformerLM

IDS_BxL = jnp.ones((8, 8), jnp.int32)
LM = TransformerLM(32, width=16, num_heads=2, mlp_dim=32, max_len=8)
CLASSIFIER = TransformerClassifier(3, vocab_size=32, width=16, num_heads=2, mlp_dim=32, max_len=8)

# Inline, so the test does not depend on the library's defaults (Megatron-style).
RULES = dl.core.parallel.LOGICAL_RULES


def _axes_and_shapes(module: nn.Module, inputs: jax.Array):
  model = dl.Linen(module)
  params, _ = jax.eval_shape(model.init, jax.random.PRNGKey(0), {"input": inputs})
  shapes = {dl.core.parallel.path_name(p): x.shape for p, x in jax.tree.leaves_with_path(params)}
  return model.axes({"input": inputs}), shapes


def _assert_every_kernel_named(axes, shapes):
  assert axes.keys() == shapes.keys()
  for path, shape in shapes.items():
    if len(shape) >= 2:
      assert axes[path] is not None and len(axes[path]) == len(shape), (path, axes[path], shape)


@pytest.mark.parametrize(
  "module,inputs,expected",
  [
    (
      LM,
      IDS_BxL,
      {
        "Decoder_0/Embedder_0/Embed_0/embedding": ("vocab", "embed"),
        "Decoder_0/Embedder_0/PositionEmbedding_0/table": (None, "embed"),
        "Decoder_0/Block_0/self_attn/query/kernel": ("embed", "heads", "head_dim"),
        "Decoder_0/Block_1/self_attn/value/bias": ("heads", "head_dim"),
        "Decoder_0/Block_0/self_attn/out/kernel": ("heads", "head_dim", "embed"),
        "Decoder_0/Block_1/MlpBlock_0/Dense_0/kernel": ("embed", "mlp"),
        "Decoder_0/Block_1/MlpBlock_0/Dense_0/bias": ("mlp",),
        "Decoder_0/Block_1/MlpBlock_0/Dense_1/kernel": ("mlp", "embed"),
        "Decoder_0/Block_0/LayerNorm_1/scale": ("norm",),
        "Decoder_0/LayerNorm_0/bias": ("norm",),
        "Decoder_0/logits/kernel": ("embed", "vocab"),
        "Decoder_0/logits/bias": ("vocab",),
      },
    ),
    (
      CLASSIFIER,
      IDS_BxL,
      {
        "Encoder_0/Embedder_0/Embed_0/embedding": ("vocab", "embed"),
        "Encoder_0/Block_1/self_attn/key/kernel": ("embed", "heads", "head_dim"),
        "Encoder_0/Block_0/MlpBlock_0/Dense_1/kernel": ("mlp", "embed"),
        "Dense_0/kernel": ("embed", "classes"),
        "Dense_0/bias": ("classes",),
      },
    ),
    (
      MLP(10, width=16, depth=3),
      jnp.ones((2, 4, 3)),
      {
        "Dense_0/kernel": ("embed", "mlp"),
        "Dense_1/kernel": ("mlp", "embed"),
        "Dense_2/kernel": ("embed", "mlp"),
        "Dense_3/kernel": ("mlp", "classes"),
        "Dense_1/bias": ("embed",),
        "Dense_3/bias": ("classes",),
      },
    ),
    (
      ResNet(10, stage_sizes=(1, 1), width=8),
      jnp.ones((2, 8, 8, 3)),
      {
        "Conv_0/kernel": (None, None, "conv_in", "conv_out"),
        "ResidualBlock_1/Conv_2/kernel": (None, None, "conv_in", "conv_out"),
        "BatchNorm_0/scale": ("norm",),
        "ResidualBlock_0/BatchNorm_1/bias": ("norm",),
        "Dense_0/kernel": ("embed", "classes"),
      },
    ),
  ],
  ids=["lm", "classifier", "mlp", "resnet"],
)
def test_parameters_carry_logical_axis_names(module, inputs, expected):
  axes, shapes = _axes_and_shapes(module, inputs)
  assert {path: axes[path] for path in expected} == expected
  _assert_every_kernel_named(axes, shapes)


def test_activations_are_constrained_under_a_mesh_and_rules_only():
  mesh = jax.make_mesh(
    (2, 2, 2), ("data", "fsdp", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 3
  )
  model = dl.Linen(LM)
  ids_BxL = jax.random.randint(jax.random.PRNGKey(1), (8, 8), 1, 32)
  params, model_state = model.init(jax.random.PRNGKey(0), {"input": ids_BxL})

  @jax.jit
  def logits_fn(params, ids_BxL):
    return model.apply(params, model_state, {"input": ids_BxL}, train=False)[0]

  assert "sharding_constraint" not in logits_fn.lower(params, ids_BxL).as_text()
  expected_BxLxV = logits_fn(params, ids_BxL)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    text = logits_fn.lower(params, ids_BxL).as_text()
    # Attention's parameters are annotated through DenseGeneral: init under the rules works.
    params, _ = jax.jit(model.init)(jax.random.PRNGKey(0), {"input": ids_BxL})
    logits_BxLxV = logits_fn(params, ids_BxL)
  # Embedder, 2 per block (after attention, after the MLP), MLP hidden units, logits.
  assert text.count("sharding_constraint") == 1 + 2 * 2 + 2 + 1
  assert logits_BxLxV.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, "model")
  np.testing.assert_allclose(logits_BxLxV, expected_BxLxV, atol=1e-5)


def test_mlp_train_flops_match_xla_cost_analysis():
  model = MLP(10, width=1024, depth=2)  # 784-1024-1024-10
  images_BxHxWxC = jax.ShapeDtypeStruct((256, 28, 28, 1), jnp.float32)
  labels_B = jax.ShapeDtypeStruct((256,), jnp.int32)
  params = jax.eval_shape(dl.Linen(model).init, jax.random.PRNGKey(0), {"input": images_BxHxWxC})[0]
  optimizer = optax.sgd(0.1)

  def step(state, batch):
    params, opt_state = state

    def loss_fn(params):
      logits_BxC = model.apply({"params": params}, batch["input"])
      return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["label"]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  state = (params, jax.eval_shape(optimizer.init, params))
  batch = {"input": images_BxHxWxC, "label": labels_B}
  cost = jax.jit(step).lower(state, batch).compile().cost_analysis()
  flops = model.train_flops(images_BxHxWxC.shape)
  assert cost["flops"] == pytest.approx(flops, rel=0.05)
  # The common 6·N·B overcounts: no gradient is computed for the data.
  kernels = sum(x.size for p, x in jax.tree.leaves_with_path(params) if "kernel" in str(p))
  assert cost["flops"] < 0.9 * 6 * kernels * 256
