"""Rematerialisation (`dl.models.remat`) and the `remat` field of dl's models."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dl
from dl.apps import decoding
from dl.models import ResNet, TransformerClassifier, TransformerLM, UNet
from dl.models.remat import POLICIES, remat

IDS_BxL = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 1, 20)
IMAGES_BxHxWxC = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 3))
MODELS = {
  "lm": (
    functools.partial(TransformerLM, 20, width=16, num_heads=2, mlp_dim=32, max_len=8),
    IDS_BxL,
  ),
  # Dropout on: remat must draw the same masks in the backward pass.
  "classifier": (
    functools.partial(
      TransformerClassifier, 5, vocab_size=20, width=16, num_heads=2, mlp_dim=32, max_len=8
    ),
    IDS_BxL,
  ),
  # Training mode: batch statistics are updated inside the rematerialised blocks.
  "resnet": (functools.partial(ResNet, 5, stage_sizes=(1, 1), width=8), IMAGES_BxHxWxC),
  "unet": (functools.partial(UNet, 3, features=4, levels=2, norm=True), IMAGES_BxHxWxC),
}


def _loss_fn(module: nn.Module, model_state, inputs: jax.Array):
  model = dl.Linen(module)

  def loss(params):
    logits, _ = model.apply(
      params, model_state, {"input": inputs}, train=True, rng=jax.random.PRNGKey(3)
    )
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  return loss


def _residuals(loss, params) -> int:
  """Elements of the arrays `jax.vjp` keeps for the backward pass, from shapes alone."""
  vjp_fn = jax.eval_shape(lambda params: jax.vjp(loss, params)[1], params)
  return sum(leaf.size for leaf in jax.tree.leaves(vjp_fn))


# The LM's blocks are the classifier's (causal); its cached decoding is tested below.
@pytest.mark.parametrize("name", ["classifier", "resnet", "unet"])
def test_remat_keeps_parameters_and_gradients_and_saves_fewer_residuals(name):
  make, inputs = MODELS[name]
  params, model_state = jax.jit(dl.Linen(make()).init)(jax.random.PRNGKey(0), {"input": inputs})
  base = _loss_fn(make(), model_state, inputs)
  grads = jax.jit(jax.grad(base))(params)
  saved = _residuals(base, params)
  for policy in ("full", "dots_saveable") if name == "classifier" else ("full",):
    module = make(remat=policy)
    shapes, _ = jax.eval_shape(dl.Linen(module).init, jax.random.PRNGKey(0), {"input": inputs})
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params), policy
    loss = _loss_fn(module, model_state, inputs)
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6),
      jax.jit(jax.grad(loss))(params),
      grads,
    )
    # Memory: compiled.memory_analysis().temp_size_in_bytes of such tiny programs does not
    # shrink; the residuals do (to a quarter to a half with these policies).
    assert _residuals(loss, params) < 0.7 * saved, policy


def test_cached_decoding_ignores_remat():
  make, _ = MODELS["lm"]
  model, remat_model = make(max_len=16), make(max_len=16, remat="full")
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 16), jnp.int32))["params"]
  prompt_BxP = IDS_BxL[:, :4]
  kwargs = dict(num_tokens=6, temperature=0.0)
  np.testing.assert_array_equal(
    decoding.sample(params, prompt_BxP, jax.random.PRNGKey(1), model=remat_model, **kwargs),
    decoding.sample(params, prompt_BxP, jax.random.PRNGKey(1), model=model, **kwargs),
  )


class _UserBlock(nn.Module):
  """A user's block: a Dense, dropout, and an array keyword argument."""

  @nn.compact
  def __call__(self, x_BxD, *, scale_D, train: bool):
    h_BxD = nn.Dense(x_BxD.shape[-1])(x_BxD) * scale_D[jnp.newaxis]
    return x_BxD + nn.Dropout(0.5, deterministic=not train)(jnp.tanh(h_BxD))


class _UserModel(nn.Module):
  policy: str = "none"

  @nn.compact
  def __call__(self, x_BxD, *, train: bool = False):
    scale_D = jnp.linspace(0.5, 1.5, x_BxD.shape[-1])
    for i in range(2):
      x_BxD = remat(_UserBlock(name=f"block_{i}"), self.policy)(x_BxD, scale_D=scale_D, train=train)
    return nn.Dense(3)(x_BxD)


def test_remat_wraps_a_users_block_with_dropout():
  x_BxD = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
  params, model_state = dl.Linen(_UserModel()).init(jax.random.PRNGKey(1), {"input": x_BxD})
  assert sorted(params) == ["Dense_0", "block_0", "block_1"]
  grads = {}
  for policy in ("none", "full", "dots_with_no_batch_dims_saveable"):
    loss = _loss_fn(_UserModel(policy), model_state, x_BxD)
    grads[policy] = jax.jit(jax.grad(loss))(params)
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6),
      grads[policy],
      grads["none"],
    )
  # Dropout is on in training (so the masks above were drawn, and drawn alike).
  model = dl.Linen(_UserModel("full"))
  train, _ = model.apply(params, model_state, {"input": x_BxD}, train=True, rng=jax.random.key(2))
  test, _ = model.apply(params, model_state, {"input": x_BxD}, train=False)
  assert not np.allclose(train, test)


def test_unknown_policy_names_the_choices():
  make, inputs = MODELS["lm"]
  with pytest.raises(ValueError, match="'dots_saveable'.*got 'dots'"):
    make(remat="dots").init(jax.random.PRNGKey(0), inputs)
  with pytest.raises(ValueError, match="'full'"):
    remat(nn.Dense(3), "everything")
  assert "none" in POLICIES and "full" in POLICIES
