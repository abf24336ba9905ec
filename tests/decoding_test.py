import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dl
from dl.apps import decoding
from dl.models import transformer

VOCAB = 17
MODEL = transformer.TransformerLM(
  num_classes=VOCAB, width=16, depth=1, num_heads=2, mlp_dim=32, max_len=16
)


@pytest.fixture(scope="module")
def params():
  return jax.jit(MODEL.init)(jax.random.PRNGKey(0), jnp.ones((1, 16), jnp.int32))["params"]


def _prompt(batch=3, length=4):
  return jax.random.randint(jax.random.PRNGKey(5), (batch, length), 1, VOCAB)


@pytest.mark.parametrize("temperature,top_k", [(0.8, 5)])
def test_cached_and_uncached_sampling_give_the_same_tokens(params, temperature, top_k):
  kwargs = dict(model=MODEL, num_tokens=10, temperature=temperature, top_k=top_k)
  cached = jax.jit(functools.partial(decoding.sample, **kwargs))
  uncached = jax.jit(functools.partial(decoding.sample_uncached, **kwargs))
  prompt_BxP, rng = _prompt(), jax.random.PRNGKey(1)
  tokens_BxT = cached(params, prompt_BxP, rng)
  chex.assert_shape(tokens_BxT, (3, 14))
  np.testing.assert_array_equal(tokens_BxT[:, :4], prompt_BxP)
  np.testing.assert_array_equal(tokens_BxT, uncached(params, prompt_BxP, rng))
  # Another key draws other tokens.
  assert not np.array_equal(cached(params, prompt_BxP, jax.random.PRNGKey(2)), tokens_BxT)


def test_generation_compiles_once_and_traces_the_model_once(params):
  traces, steps = [], []

  def step(cache, ids_Bx1):
    steps.append(1)
    logits_Bx1xV, mutated = MODEL.clone(decode=True).apply(
      {"params": params, "cache": cache}, ids_Bx1, mutable=["cache"]
    )
    return logits_Bx1xV[:, 0], mutated["cache"]

  def generate(prompt_BxP, rng):
    traces.append(1)
    cache = decoding.init_cache(MODEL.clone(decode=True), jnp.ones((3, 16), jnp.int32))
    return decoding.decode_loop(step, cache, prompt_BxP, rng, num_tokens=12)

  generate = jax.jit(generate)
  first = generate(_prompt(), jax.random.PRNGKey(0))
  second = generate(_prompt() + 0, jax.random.PRNGKey(1))
  assert len(traces) == 1  # a second call with new values reuses the compiled loop
  assert len(steps) == 1  # 15 positions, one trace of the step: no retrace per token
  assert not np.array_equal(first, second)


def test_top_k_one_is_greedy(params):
  generate = jax.jit(  # dl.Linen around the module, as `task.model` of a dl.Task is
    functools.partial(decoding.sample, model=dl.Linen(MODEL), num_tokens=6),
    static_argnames=("temperature", "top_k"),
  )
  greedy = generate(params, _prompt(), jax.random.PRNGKey(0), temperature=0.0)
  top1 = generate(params, _prompt(), jax.random.PRNGKey(3), top_k=1)
  np.testing.assert_array_equal(greedy, top1)


def test_choose_respects_top_k():
  logits_BxV = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]] * 200))
  rngs = jax.random.split(jax.random.PRNGKey(0), 1)[0]
  drawn_B = decoding.choose(logits_BxV, rngs, top_k=2)
  assert set(np.unique(drawn_B)) == {2, 3}
  all_B = decoding.choose(logits_BxV, rngs)
  assert set(np.unique(all_B)) == {0, 1, 2, 3}


def test_too_long_generation_says_how_to_fix(params):
  with pytest.raises(ValueError, match=r"= 20 exceeds the model's max_len=16"):
    decoding.sample(params, _prompt(length=4), jax.random.PRNGKey(0), model=MODEL, num_tokens=16)
  with pytest.raises(TypeError, match="Linen module with a decode cache .* got method"):
    decoding.sample(params, _prompt(), jax.random.PRNGKey(0), model=MODEL.apply, num_tokens=2)
