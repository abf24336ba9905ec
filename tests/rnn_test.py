"""Tests for dl.models.rnn: shapes, padding invariance of outputs and gradients, stacking.

Shapes are checked abstractly (`jax.eval_shape`: nothing compiles); values in one jitted
call per shape, since scans are slow to run op by op.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl import models
from dl.data import text
from dl.models import rnn

_TINY = {"vocab_size": 20, "embed_dim": 8, "hidden": 8}
_IDS = np.array([[3, 4, 5, 6, 0, 0], [7, 8, 0, 0, 0, 0], [9, 10, 11, 12, 13, 14]], np.int32)


def _params(model, x):
  return jax.jit(lambda key, x: model.init(key, x, train=False))(jax.random.PRNGKey(0), x)["params"]


def _param_shapes(model, x):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"]


def _output_shape(model, x) -> tuple[int, ...]:
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  return jax.eval_shape(model.apply, variables, x).shape


@pytest.mark.parametrize(
  "cell, bidirectional, num_layers, pooling",
  [("lstm", False, 1, "last"), ("gru", True, 2, "mean_max")],
)
def test_padding_changes_neither_outputs_nor_gradients(cell, bidirectional, num_layers, pooling):
  model = rnn.TextRNN(
    num_classes=3,
    cell=cell,
    bidirectional=bidirectional,
    num_layers=num_layers,
    pooling=pooling,
    **_TINY,
  )
  params = _params(model, jnp.asarray(_IDS))

  @jax.jit
  def logits_and_grads(ids_BxL):
    def total(p):
      logits = model.apply({"params": p}, ids_BxL)
      return logits.sum(), logits

    (_, logits), grads = jax.value_and_grad(total, has_aux=True)(params)
    return logits, grads

  short_logits, short_grads = logits_and_grads(jnp.asarray(_IDS))
  long_logits, long_grads = logits_and_grads(jnp.asarray(np.pad(_IDS, ((0, 0), (0, 9)))))
  np.testing.assert_allclose(long_logits, short_logits, rtol=1e-5, atol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), long_grads, short_grads
  )
  # The pad row of the embedding never reaches the output...
  np.testing.assert_array_equal(long_grads["Embed_0"]["embedding"][text.PAD_ID], 0.0)
  # ...while every valid step does: a token written over the first padding changes the logits.
  longer_logits, _ = logits_and_grads(jnp.asarray(_IDS).at[0, 4].set(5))
  assert not np.allclose(longer_logits[0], short_logits[0])
  np.testing.assert_allclose(longer_logits[1:], short_logits[1:], rtol=1e-5, atol=1e-6)


def test_text_rnn_shapes_from_the_trainers_float_init():
  model = rnn.TextRNN(num_classes=5, bidirectional=True, pooling="mean_max", **_TINY)
  params = _param_shapes(model, jnp.zeros((1, 6)))  # dl's trainer inits with float zeros
  # Mean and max pooling of 2 directions x 8 units.
  assert params["Dense_0"]["kernel"].shape == (32, 5)
  assert _output_shape(model, jnp.asarray(_IDS)) == (3, 5)


def test_stacked_bidirectional_layers_have_their_own_cells():
  model = rnn.TextRNN(num_classes=2, bidirectional=True, num_layers=3, cell="gru", **_TINY)
  encoder = _param_shapes(model, jnp.asarray(_IDS))["encoder"]
  names = [f"{d}_{k}" for k in range(3) for d in ("forward", "backward")]
  assert sorted(encoder) == sorted(names)
  assert encoder["forward_0"]["ir"]["kernel"].shape == (8, 8)
  # Layer 1 reads both directions of layer 0.
  assert encoder["forward_1"]["ir"]["kernel"].shape == (16, 8)


def test_dropout_is_active_only_in_training():
  model = rnn.TextRNN(num_classes=2, dropout=0.5, **_TINY)
  ids = jnp.asarray(_IDS)
  variables = {"params": _params(model, ids)}
  apply = jax.jit(
    lambda key, train: model.apply(variables, ids, train=train, rngs={"dropout": key}),
    static_argnums=1,
  )
  np.testing.assert_array_equal(
    apply(jax.random.PRNGKey(1), False), apply(jax.random.PRNGKey(2), False)
  )
  assert not np.allclose(apply(jax.random.PRNGKey(1), True), apply(jax.random.PRNGKey(2), True))


def test_series_rnn_stacked_bidirectional_gru_shapes():
  model = rnn.SeriesRNN(num_classes=2, cell="gru", hidden=8, num_layers=2, bidirectional=True)
  assert _output_shape(model, jnp.zeros((4, 12, 3))) == (4, 2)


def test_series_rnn_reads_univariate_windows_up_to_the_last_step():
  model = rnn.SeriesRNN(num_classes=1, hidden=8)
  x = jnp.zeros((4, 12))
  params = _params(model, x)
  apply = jax.jit(lambda x: model.apply({"params": params}, x))
  out = apply(x)
  assert out.shape == (4, 1)
  changed = apply(x.at[0, -1].set(3.0))
  assert not np.allclose(changed[0], out[0])
  np.testing.assert_array_equal(changed[1:], out[1:])


def test_pool_ignores_invalid_steps_and_empty_rows_give_zeros():
  h = jnp.asarray([[[1.0], [3.0], [100.0]], [[5.0], [6.0], [7.0]]])
  mask = jnp.asarray([[True, True, False], [False, False, False]])
  np.testing.assert_allclose(rnn.pool(h, mask, "mean"), [[2.0], [0.0]])
  np.testing.assert_allclose(rnn.pool(h, mask, "max"), [[3.0], [0.0]])
  np.testing.assert_allclose(rnn.pool(h, mask, "last"), [[3.0], [0.0]])
  np.testing.assert_allclose(rnn.pool(h, mask, "mean_max"), [[2.0, 3.0], [0.0, 0.0]])


def test_registered_and_errors_name_the_choices():
  assert models.MODELS["text_rnn"] is rnn.TextRNN
  assert models.MODELS["series_rnn"] is rnn.SeriesRNN
  assert rnn.PAD_ID == text.PAD_ID
  ids = jnp.asarray(_IDS)
  with pytest.raises(ValueError, match="expected one of: lstm, gru"):
    _param_shapes(rnn.TextRNN(num_classes=2, cell="rnn", **_TINY), ids)
  with pytest.raises(ValueError, match="token ids"):
    _param_shapes(rnn.TextRNN(num_classes=2, **_TINY), jnp.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match="pooling"):
    _param_shapes(rnn.TextRNN(num_classes=2, pooling="sum", **_TINY), ids)
