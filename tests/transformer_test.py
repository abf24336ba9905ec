import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dl import models
from dl.apps import decoding
from dl.models import transformer

TINY = dict(width=16, depth=1, num_heads=2, mlp_dim=32, max_len=16)


def _jit(model):
  """Jitted init and apply: one compile each instead of one per operation."""
  return jax.jit(model.init), jax.jit(model.apply, static_argnames=("train", "mutable"))


def _ids(shape, vocab, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 1, vocab)


def test_classifier_shape_and_padding_is_ignored():
  model = models.create(
    "transformer", num_classes=2, vocab_size=11, positions="sinusoidal", dropout=0.0, **TINY
  )
  init, apply = _jit(model)
  tokens = np.asarray(_ids((3, 5), 11))
  short_BxL = np.pad(tokens, ((0, 0), (0, 2)))  # pad id 0 on the right
  long_BxL = np.pad(tokens, ((0, 0), (0, 9)))
  variables = init(jax.random.PRNGKey(0), short_BxL)
  a = apply(variables, short_BxL)
  b = apply(variables, long_BxL)
  chex.assert_shape(a, (3, 2))
  np.testing.assert_allclose(a, b, atol=1e-5)
  # A token in place of the padding does change the output.
  changed_BxL = long_BxL.copy()
  changed_BxL[:, 6] = 3
  assert not np.allclose(apply(variables, changed_BxL), b, atol=1e-4)


@pytest.mark.parametrize("positions", ["learned"])
def test_lm_is_causal_and_drops_out_only_in_training(positions):
  model = models.create("transformer_lm", num_classes=13, positions=positions, dropout=0.5, **TINY)
  init, apply = _jit(model)
  ids_BxL = np.asarray(_ids((2, 10), 13))
  variables = init(jax.random.PRNGKey(0), ids_BxL)
  logits_BxLxV = apply(variables, ids_BxL)
  chex.assert_shape(logits_BxLxV, (2, 10, 13))
  changed_BxL = ids_BxL.copy()
  changed_BxL[:, 6:] = (changed_BxL[:, 6:] % 12) + 1  # every future token differs
  changed_BxLxV = apply(variables, changed_BxL)
  np.testing.assert_allclose(changed_BxLxV[:, :6], logits_BxLxV[:, :6], atol=1e-5)
  assert not np.allclose(changed_BxLxV[:, 6:], logits_BxLxV[:, 6:], atol=1e-4)
  a = apply(variables, ids_BxL, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  b = apply(variables, ids_BxL, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(apply(variables, ids_BxL), logits_BxLxV)


def test_seq2seq_shapes_causality_source_padding_and_cached_translation():
  model = transformer.TransformerSeq2Seq(num_classes=13, source_vocab_size=7, **TINY)
  init, apply = _jit(model)
  sources_BxS = np.asarray(_ids((2, 5), 7))
  targets_BxT = np.asarray(_ids((2, 8), 13, seed=1))
  variables = init(jax.random.PRNGKey(0), sources_BxS, targets_BxT)
  logits_BxTxV = apply(variables, sources_BxS, targets_BxT)
  chex.assert_shape(logits_BxTxV, (2, 8, 13))
  padded_BxS = np.pad(sources_BxS, ((0, 0), (0, 4)))
  np.testing.assert_allclose(apply(variables, padded_BxS, targets_BxT), logits_BxTxV, atol=1e-5)
  changed_BxT = targets_BxT.copy()
  changed_BxT[:, 4:] = (changed_BxT[:, 4:] % 12) + 1
  changed_BxTxV = apply(variables, sources_BxS, changed_BxT)
  np.testing.assert_allclose(changed_BxTxV[:, :4], logits_BxTxV[:, :4], atol=1e-5)
  other_sources_BxS = (sources_BxS % 6) + 1
  assert not np.allclose(apply(variables, other_sources_BxS, targets_BxT), logits_BxTxV)
  # Greedy cached decoding: each token is the argmax of the full decoder given those before.
  translate = jax.jit(functools.partial(decoding.translate, model=model, num_tokens=7, start_id=1))
  generated_BxT = translate(variables["params"], sources_BxS, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(generated_BxT[:, 0], 1)
  full_BxTxV = apply(variables, sources_BxS, generated_BxT)
  np.testing.assert_array_equal(generated_BxT[:, 1:], np.argmax(full_BxTxV[:, :-1], -1))


def test_rejects_float_inputs_and_too_long_sequences():
  model = transformer.TransformerLM(num_classes=5, **TINY)
  with pytest.raises(ValueError, match=r"integer token ids of shape \(B, L\)"):
    model.init(jax.random.PRNGKey(0), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="exceeds max_len=16"):
    model.init(jax.random.PRNGKey(0), jnp.ones((2, 17), jnp.int32))


def test_sinusoids_are_fixed_and_bounded():
  table = transformer.sinusoids(10, 8)
  assert table.shape == (10, 8)
  np.testing.assert_allclose(table[0, 0::2], 0.0)
  np.testing.assert_allclose(table[0, 1::2], 1.0)
  assert np.abs(table).max() <= 1.0
