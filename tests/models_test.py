import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl import models


@pytest.mark.parametrize(
  "name,input_shape", [("mlp", (30,)), ("cnn", (8, 8, 1)), ("resnet", (8, 8, 1))]
)
def test_logits_shape(name, input_shape):
  model = models.create(name, num_classes=7)
  x = jnp.ones((3, *input_shape))
  variables = model.init(jax.random.PRNGKey(0), x)
  chex.assert_shape(model.apply(variables, x), (3, 7))


def test_resnet_updates_batch_stats_only_in_training():
  model = models.ResNet(num_classes=3, stage_sizes=(1, 1), width=8)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  before = variables["batch_stats"]["BatchNorm_0"]["mean"]
  after = updated["batch_stats"]["BatchNorm_0"]["mean"]
  assert not np.allclose(before, after)
  # Evaluation uses the running averages and leaves them alone.
  out = model.apply(variables, x, train=False)
  chex.assert_shape(out, (4, 3))


def test_mlp_dropout_needs_rng_and_is_off_in_eval():
  model = models.MLP(num_classes=2, width=16, depth=1, dropout=0.5)
  x = jnp.ones((5, 4))
  variables = model.init(jax.random.PRNGKey(0), x)
  a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


def test_unknown_model_name_says_what_exists():
  with pytest.raises(
    ValueError, match=r"unknown model 'cnnn'; did you mean 'cnn'\?.*mlp, cnn, resnet"
  ):
    models.create("cnnn", num_classes=2)


def test_unknown_hyperparameter_lists_valid_ones():
  with pytest.raises(ValueError, match=r"no hyperparameter 'widht'.*width"):
    models.create("mlp", num_classes=2, widht=3)


def test_unknown_activation():
  model = models.MLP(num_classes=2, activation="relu6x")
  with pytest.raises(ValueError, match="unknown activation 'relu6x'; expected one of relu"):
    model.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))


def test_every_model_is_named_in_models():
  """`MODELS` (what a config's `model.name` can build) leaves out no model, only the parts."""
  parts = {models.LogMel, models.RNNEncoder}  # a front end and an encoder, used inside models
  exported = {
    getattr(models, name)
    for name in models.__all__
    if isinstance(getattr(models, name), type) and issubclass(getattr(models, name), nn.Module)
  }
  assert exported - parts == set(models.MODELS.values())
