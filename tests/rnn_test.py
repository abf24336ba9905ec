"""Tests for dl.models.rnn: shapes, padding invariance of outputs and gradients, stacking."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl import models
from dl.data import text
from dl.models import rnn

_TINY = {"vocab_size": 20, "embed_dim": 8, "hidden": 8}


def _init(model, x):
  # Jitted: an eager init of a scan runs op by op and takes seconds.
  return jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)


def _apply(model, variables, x):
  return jax.jit(model.apply)(variables, x)


def _padded(ids_BxL: np.ndarray, extra: int) -> jnp.ndarray:
  return jnp.asarray(np.pad(ids_BxL, ((0, 0), (0, extra))))


def _logits_and_grads(model, variables, ids_BxL):
  """Logits and the gradient of their sum, in one compiled call per shape."""

  def total(params):
    logits = model.apply({"params": params}, ids_BxL)
    return logits.sum(), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(variables["params"])
  return logits, grads


_IDS = np.array([[3, 4, 5, 6, 0, 0], [7, 8, 0, 0, 0, 0], [9, 10, 11, 12, 13, 14]], np.int32)


@pytest.mark.parametrize(
  "cell, bidirectional, num_layers, pooling",
  [
    ("lstm", False, 1, "last"),
    ("gru", True, 2, "mean_max"),
  ],
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
  variables = _init(model, jnp.asarray(_IDS))
  short_logits, short_grads = _logits_and_grads(model, variables, jnp.asarray(_IDS))
  long_logits, long_grads = _logits_and_grads(model, variables, _padded(_IDS, 9))
  np.testing.assert_allclose(long_logits, short_logits, rtol=1e-5, atol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), long_grads, short_grads
  )
  # The pad row of the embedding never reaches the output.
  np.testing.assert_array_equal(long_grads["Embed_0"]["embedding"][text.PAD_ID], 0.0)


def test_a_token_after_the_padding_would_change_the_output():
  # Guards the test above: the model does read every valid step, and the same id at a
  # valid position changes the logits.
  model = rnn.TextRNN(num_classes=2, bidirectional=True, **_TINY)
  ids = jnp.asarray(_IDS)
  variables = _init(model, ids)
  longer = ids.at[0, 4].set(5)
  assert not np.allclose(_apply(model, variables, longer)[0], _apply(model, variables, ids)[0])


def test_text_rnn_shapes():
  model = rnn.TextRNN(num_classes=5, bidirectional=True, pooling="mean_max", **_TINY)
  variables = _init(model, jnp.zeros((1, 6)))  # as dl's trainer inits: float zeros
  assert _apply(model, variables, jnp.asarray(_IDS)).shape == (3, 5)
  # mean and max pooling of 2 directions x 8 units.
  assert variables["params"]["Dense_0"]["kernel"].shape == (32, 5)


def test_stacked_bidirectional_layers_have_their_own_cells():
  model = rnn.TextRNN(num_classes=2, bidirectional=True, num_layers=3, cell="gru", **_TINY)
  encoder = _init(model, jnp.asarray(_IDS))["params"]["encoder"]
  names = [f"{d}_{k}" for k in range(3) for d in ("forward", "backward")]
  assert sorted(encoder) == sorted(names)
  # Layer 1 reads both directions of layer 0.
  assert encoder["forward_1"]["ir"]["kernel"].shape == (16, 8)
  assert encoder["forward_0"]["ir"]["kernel"].shape == (8, 8)


def test_dropout_is_active_only_in_training():
  model = rnn.TextRNN(num_classes=2, dropout=0.5, **_TINY)
  ids = jnp.asarray(_IDS)
  variables = _init(model, ids)
  apply = jax.jit(model.apply, static_argnames="train")
  np.testing.assert_array_equal(apply(variables, ids), apply(variables, ids))
  a, b = (
    apply(variables, ids, train=True, rngs={"dropout": jax.random.PRNGKey(s)}) for s in (1, 2)
  )
  assert not np.allclose(a, b)


def test_series_rnn_stacked_bidirectional_gru_shapes():
  model = rnn.SeriesRNN(num_classes=2, cell="gru", hidden=8, num_layers=2, bidirectional=True)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 12, 3)), jnp.float32)
  assert _apply(model, _init(model, x), x).shape == (4, 2)


def test_series_rnn_reads_univariate_windows_up_to_the_last_step():
  model = rnn.SeriesRNN(num_classes=1, hidden=8)
  x = jnp.zeros((4, 12))
  variables = _init(model, x)
  assert _apply(model, variables, x).shape == (4, 1)
  changed = x.at[0, -1].set(3.0)
  assert not np.allclose(_apply(model, variables, changed)[0], _apply(model, variables, x)[0])


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
  with pytest.raises(ValueError, match="expected one of: lstm, gru"):
    _init(rnn.TextRNN(num_classes=2, cell="rnn", **_TINY), jnp.asarray(_IDS))
  with pytest.raises(ValueError, match="token ids"):
    _init(rnn.TextRNN(num_classes=2, **_TINY), jnp.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match="pooling"):
    _init(rnn.TextRNN(num_classes=2, pooling="sum", **_TINY), jnp.asarray(_IDS))
