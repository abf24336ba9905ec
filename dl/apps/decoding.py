"""Autoregressive sampling from Transformer language models, with and without a KV cache.

`sample` runs one `jax.lax.scan` over positions with the model's `decode=True` key/value
cache (Flax's `cache` collection): each step feeds one token (B, 1) and attends to the cached
keys and values. `sample_uncached` is the reference: each step reruns the model on the whole
(B, P + N) buffer and reads the logits at the current position (causal masking makes the
not-yet-written tail irrelevant). Both draw the token after position t with
`jax.random.fold_in(rng, t)`, so with the same `rng` they give the same tokens.

Both are pure functions: jit them where they are called, with the module and sizes static:

  generate = jax.jit(functools.partial(dl.apps.decoding.sample, model=model, num_tokens=64))
  tokens_BxT = generate(params, prompt_BxP, jax.random.PRNGKey(0))

`model` is a Linen module or `dl.Linen` around one (e.g. `task.model` of a `dl.Task`), and
`params` its parameters (`state.params`).

Axis letters: B batch, P prompt length, N new tokens, T = P + N, V vocabulary.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl.models.adapters import Linen

Cache = dict
StepFn = Callable[[Cache, jax.Array], tuple[jax.Array, Cache]]


def linen_module(model: Any) -> nn.Module:
  """The Linen module of `model`: the module itself, or the one inside `dl.Linen`."""
  module = model.module if isinstance(model, Linen) else model
  if not isinstance(module, nn.Module):
    raise TypeError(
      "sampling needs a Flax Linen module with a decode cache (e.g. dl.models.TransformerLM) "
      f"or dl.Linen around one; got {type(model).__name__}."
    )
  return module


def choose(
  logits_BxV: jax.Array, rng: jax.Array, *, temperature: float = 1.0, top_k: int | None = None
) -> jax.Array:
  """Draws one token id per row from `softmax(logits / temperature)`, optionally top-k.

  Args:
    logits_BxV: unnormalised log-probabilities of the next token.
    rng: PRNG key.
    temperature: 0 picks the most likely token (greedy); higher flattens the distribution.
    top_k: keep only the k most likely tokens (None or 0 keeps all).

  Returns:
    Token ids (B,) int32.
  """
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 is greedy); got {temperature}.")
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def sample(
  params,
  prompt_BxP: jax.Array,
  rng: jax.Array,
  *,
  model: nn.Module | Linen,
  num_tokens: int,
  temperature: float = 1.0,
  top_k: int | None = None,
) -> jax.Array:
  """Continues each prompt by `num_tokens` tokens, using the model's key/value cache.

  Args:
    params: the model's parameters.
    prompt_BxP: token ids that start each sequence (P >= 1).
    rng: PRNG key; token t + 1 is drawn with `fold_in(rng, t)`.
    model: a causal LM with a `decode` field and `max_len` >= P + N
      (e.g. `dl.models.TransformerLM`, or `dl.Linen` around one); its `decode` and
      `dropout` are overridden.
    num_tokens: N, how many tokens to add.
    temperature: sampling temperature; 0 is greedy.
    top_k: sample among the k most likely tokens only (None keeps all).

  Returns:
    Token ids (B, P + N) int32: the prompt followed by the sampled tokens.
  """
  model = linen_module(model)
  batch_size, total = _check_sizes(model, prompt_BxP, num_tokens)
  decoder = model.clone(decode=True, dropout=0.0)
  ids_BxT = jnp.zeros((batch_size, total), jnp.int32)
  cache = init_cache(decoder, ids_BxT)

  def step(cache, ids_Bx1):
    logits_Bx1xV, mutated = decoder.apply(
      {"params": params, "cache": cache}, ids_Bx1, mutable=["cache"]
    )
    return logits_Bx1xV[:, 0], mutated["cache"]

  return decode_loop(step, cache, prompt_BxP, rng, num_tokens, temperature, top_k)


def sample_uncached(
  params,
  prompt_BxP: jax.Array,
  rng: jax.Array,
  *,
  model: nn.Module | Linen,
  num_tokens: int,
  temperature: float = 1.0,
  top_k: int | None = None,
) -> jax.Array:
  """`sample` without a cache: each step reruns the model on the whole (B, P + N) buffer.

  The reference `sample` must agree with, and the baseline of the sampling benchmark.
  Arguments and result as in `sample`.
  """
  model = linen_module(model)
  _check_sizes(model, prompt_BxP, num_tokens)
  model = model.clone(decode=False, dropout=0.0)
  prompt_len = prompt_BxP.shape[1]
  ids_BxT = jnp.pad(prompt_BxP.astype(jnp.int32), ((0, 0), (0, num_tokens)))

  def step(ids_BxT, t):
    logits_BxTxV = model.apply({"params": params}, ids_BxT)
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, t, axis=1, keepdims=False)
    next_B = choose(logits_BxV, jax.random.fold_in(rng, t), temperature=temperature, top_k=top_k)
    return ids_BxT.at[:, t + 1].set(next_B), None

  positions = jnp.arange(prompt_len - 1, prompt_len - 1 + num_tokens)
  ids_BxT, _ = jax.lax.scan(step, ids_BxT, positions)
  return ids_BxT


def translate(
  params,
  sources_BxS: jax.Array,
  rng: jax.Array,
  *,
  model: nn.Module | Linen,
  num_tokens: int,
  start_id: int,
  temperature: float = 0.0,
  top_k: int | None = None,
) -> jax.Array:
  """Generates targets for source sequences with an encoder-decoder and its decoder cache.

  The source is encoded once; the decoder then runs one position per `lax.scan` step.

  Args:
    params: the parameters of `model`.
    sources_BxS: source token ids (pad 0).
    rng: PRNG key (unused when greedy).
    model: a `dl.models.TransformerSeq2Seq` (or a module with the same `encode` and
      `decode_step` methods and `decode` field), or `dl.Linen` around one.
    num_tokens: N, how many target tokens to generate.
    start_id: the token the target starts with (its first decoder input).
    temperature: 0 (default) is greedy decoding.
    top_k: as in `choose`.

  Returns:
    Target ids (B, 1 + N) int32: `start_id` then the generated tokens.
  """
  batch_size = sources_BxS.shape[0]
  model = linen_module(model).clone(decode=False, dropout=0.0)
  decoder = model.clone(decode=True)
  encoded_BxSxD = model.apply({"params": params}, sources_BxS, method="encode")
  targets_BxT = jnp.zeros((batch_size, 1 + num_tokens), jnp.int32)
  cache = init_cache(decoder, sources_BxS, targets_BxT)

  def step(cache, ids_Bx1):
    logits_Bx1xV, mutated = decoder.apply(
      {"params": params, "cache": cache},
      ids_Bx1,
      sources_BxS,
      encoded_BxSxD,
      method="decode_step",
      mutable=["cache"],
    )
    return logits_Bx1xV[:, 0], mutated["cache"]

  start_Bx1 = jnp.full((batch_size, 1), start_id, jnp.int32)
  return decode_loop(step, cache, start_Bx1, rng, num_tokens, temperature, top_k)


def init_cache(decoder: nn.Module, *example_args: jax.Array) -> Cache:
  """An all-zero `cache` collection for `decoder` (decode=True), sized by the example inputs.

  The inputs give the full lengths (the cache holds T positions); only shapes are used.
  """
  shapes = jax.eval_shape(decoder.init, jax.random.PRNGKey(0), *example_args)
  if "cache" not in shapes:
    raise ValueError(
      f"{type(decoder).__name__} made no 'cache' collection; it needs decode=True and "
      "attention built with nn.MultiHeadDotProductAttention(decode=...)."
    )
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def decode_loop(
  step: StepFn,
  cache: Cache,
  prompt_BxP: jax.Array,
  rng: jax.Array,
  num_tokens: int,
  temperature: float = 1.0,
  top_k: int | None = None,
) -> jax.Array:
  """Feeds the prompt, then sampled tokens, one position per `lax.scan` step through `step`.

  Args:
    step: `(cache, ids_Bx1) -> (logits_BxV, cache)` for the next position.
    cache: the empty cache.
    prompt_BxP: the first tokens (kept as they are).
    rng: PRNG key; token t + 1 is drawn with `fold_in(rng, t)`.
    num_tokens: N, how many tokens to add after the prompt.
    temperature: as in `choose`.
    top_k: as in `choose`.

  Returns:
    Token ids (B, P + N) int32.
  """
  prompt_len = prompt_BxP.shape[1]
  ids_BxT = jnp.pad(prompt_BxP.astype(jnp.int32), ((0, 0), (0, num_tokens)))

  def body(carry, t):
    ids_BxT, cache = carry
    ids_Bx1 = jax.lax.dynamic_slice_in_dim(ids_BxT, t, 1, axis=1)
    logits_BxV, cache = step(cache, ids_Bx1)
    drawn_B = choose(logits_BxV, jax.random.fold_in(rng, t), temperature=temperature, top_k=top_k)
    # Inside the prompt the next token is given: the step only fills the cache.
    given_B = jax.lax.dynamic_index_in_dim(ids_BxT, t + 1, axis=1, keepdims=False)
    next_B = jnp.where(t + 1 < prompt_len, given_B, drawn_B)
    return (ids_BxT.at[:, t + 1].set(next_B), cache), None

  positions = jnp.arange(prompt_len - 1 + num_tokens)
  (ids_BxT, _), _ = jax.lax.scan(body, (ids_BxT, cache), positions)
  return ids_BxT


def _check_sizes(model: nn.Module, prompt_BxP: jax.Array, num_tokens: int) -> tuple[int, int]:
  """Returns (B, P + N), or raises if the prompt is empty or P + N exceeds `max_len`."""
  if prompt_BxP.ndim != 2 or prompt_BxP.shape[1] < 1:
    raise ValueError(
      f"the prompt must be token ids of shape (B, P) with P >= 1; got {prompt_BxP.shape}. "
      "Start from a start-of-text token if there is no prompt."
    )
  total = prompt_BxP.shape[1] + num_tokens
  max_len = getattr(model, "max_len", total)
  if total > max_len:
    raise ValueError(
      f"prompt length {prompt_BxP.shape[1]} + num_tokens {num_tokens} = {total} exceeds the "
      f"model's max_len={max_len}; shorten one or build the model with a larger max_len."
    )
  return prompt_BxP.shape[0], total
