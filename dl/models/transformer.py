"""Transformers over token ids: an encoder classifier, a causal language model, and an
encoder-decoder for sequence to sequence.

All blocks are pre-LayerNorm (Xiong et al. 2020): `x + f(LayerNorm(x))`, with a final
LayerNorm before the output layer. Token id `PAD_ID` (0) is padding: the encoder masks it
out of attention and pooling. Positions are learned embeddings or fixed sinusoids.

Axis letters: B batch, L (or S, T) sequence, D width, V vocabulary, C classes.

The decoder-only `TransformerLM` and the decoder of `TransformerSeq2Seq` take `decode=True`
for autoregressive decoding with a key/value cache (Flax's `cache` collection): initialise
with the full-length ids to size the cache, then feed one position at a time
(`dl.apps.decoding` does this).

Parameters carry logical axis names (`nn.with_logical_partitioning`; values and shapes are
Flax's defaults, so checkpoints are unchanged), which a mesh's rules map to mesh axes:
"vocab" (V), "embed" (D), "heads" (H), "head_dim" (Dh), "mlp" (F), "norm" (LayerNorm
parameters) and "classes" (C). Activations are constrained by logical names too
(`nn.with_logical_constraint`; a no-op without rules): the residual stream (B, L, D) is
("act_batch", "act_length", "act_embed"), the MLP's hidden units (B, L, F) ("act_batch",
"act_length", "act_mlp") and the LM's logits (B, L, V) ("act_batch", "act_length", "act_vocab").

`remat` names what each block keeps for the backward pass (`dl.models.REMAT_POLICIES`):
"none", "full" or a `jax.checkpoint_policies` name. It changes memory and compute, never
parameters or values; the cached decoding path (`decode=True`) ignores it.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import default_embed_init, default_kernel_init

from dl.models.remat import check_policy, remat

PAD_ID = 0
POSITIONS = ("learned", "sinusoidal")

# Logical names of activations: the residual stream, the MLP's hidden units, the LM's logits.
RESIDUAL = ("act_batch", "act_length", "act_embed")
HIDDEN = ("act_batch", "act_length", "act_mlp")
LOGITS = ("act_batch", "act_length", "act_vocab")


def _named(init: nn.initializers.Initializer, *names: str | None):
  """`init` with a logical axis name per dimension; callers pass the layer's Flax default, so
  parameter values do not change."""
  return nn.with_logical_partitioning(init, names)


def _named_general(init: nn.initializers.Initializer, *names: str | None):
  """`_named` for the kernels and biases of `nn.DenseGeneral` (inside attention).

  DenseGeneral calls `init` with the parameter flattened to (inputs, outputs) and unboxes it
  before reshaping, so under a mesh and logical axis rules the names' constraint would meet
  an array of the wrong rank (flax issue #3676). Empty rules make that unboxing a no-op; the
  names still reach `Model.axes`, and the parameter is laid out by dl's placement.
  """
  return nn.with_logical_partitioning(init, names, rules=())


def _layer_norm(dtype: Any) -> nn.LayerNorm:
  """A LayerNorm whose scale and bias are named "norm"."""
  return nn.LayerNorm(
    dtype=dtype,
    scale_init=_named(nn.initializers.ones, "norm"),
    bias_init=_named(nn.initializers.zeros, "norm"),
  )


def _dense(features: int, dtype: Any, inputs: str, outputs: str, **kwargs) -> nn.Dense:
  """A Dense layer with Flax's inits, its kernel named (`inputs`, `outputs`), its bias `outputs`."""
  return nn.Dense(
    features,
    dtype=dtype,
    kernel_init=_named(default_kernel_init, inputs, outputs),
    bias_init=_named(nn.initializers.zeros, outputs),
    **kwargs,
  )


def sinusoids(max_len: int, width: int) -> np.ndarray:
  """The fixed sinusoidal position table of Vaswani et al. (2017), shape (max_len, width)."""
  positions_Lx1 = np.arange(max_len, dtype=np.float64)[:, np.newaxis]
  inverse_freqs_1xH = np.exp(
    -np.log(10_000.0) * np.arange(0, width, 2, dtype=np.float64)[np.newaxis, :] / width
  )
  angles_LxH = positions_Lx1 * inverse_freqs_1xH
  table_LxD = np.zeros((max_len, width), np.float32)
  table_LxD[:, 0::2] = np.sin(angles_LxH)
  table_LxD[:, 1::2] = np.cos(angles_LxH[:, : width // 2])
  return table_LxD


class PositionEmbedding(nn.Module):
  """Adds position embeddings to (B, L, D) inputs; with `decode`, one position per call.

  Attributes:
    max_len: the longest sequence (size of the table).
    kind: "learned" (a trained table) or "sinusoidal" (fixed).
    decode: feed one position per call, counting positions in the `cache` collection.
  """

  max_len: int
  kind: str = "learned"
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    length, width = x_BxLxD.shape[1:]
    if self.kind not in POSITIONS:
      raise ValueError(f"unknown positions {self.kind!r}; expected one of {POSITIONS}.")
    if length > self.max_len:
      raise ValueError(
        f"sequence length {length} exceeds max_len={self.max_len}; raise the model's max_len."
      )
    if self.kind == "learned":
      init = nn.initializers.normal(stddev=0.02)
      table_LxD = self.param("table", _named(init, None, "embed"), (self.max_len, width))
    else:
      table_LxD = jnp.asarray(sinusoids(self.max_len, width))
    if self.decode:
      is_initialized = self.has_variable("cache", "position")
      position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      if is_initialized:
        row_1xD = jax.lax.dynamic_slice_in_dim(table_LxD, position.value, 1)
        position.value = position.value + 1
        return x_BxLxD + row_1xD[jnp.newaxis].astype(x_BxLxD.dtype)
    return x_BxLxD + table_LxD[jnp.newaxis, :length].astype(x_BxLxD.dtype)


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> dropout -> Dense(width) -> dropout."""

  mlp_dim: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, *, train: bool) -> jax.Array:
    width = x_BxLxD.shape[-1]
    h_BxLxF = _dense(self.mlp_dim, self.dtype, "embed", "mlp")(x_BxLxD)
    h_BxLxF = nn.with_logical_constraint(nn.gelu(h_BxLxF), HIDDEN)
    h_BxLxF = nn.Dropout(self.dropout, deterministic=not train)(h_BxLxF)
    out_BxLxD = _dense(width, self.dtype, "mlp", "embed")(h_BxLxF)
    return nn.Dropout(self.dropout, deterministic=not train)(out_BxLxD)


class Block(nn.Module):
  """A pre-LN Transformer block: self-attention, optional cross-attention, MLP.

  Attributes:
    num_heads: attention heads; the width must be divisible by it.
    mlp_dim: hidden units of the MLP.
    dropout: dropout rate on attention weights and residual branches.
    cross_attention: add a cross-attention sub-block over `context_BxSxD`.
    decode: cache keys and values of the self-attention (one position per call).
  """

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  cross_attention: bool = False
  decode: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    x_BxLxD: jax.Array,
    mask_Bx1xLxL: jax.Array | None,
    *,
    train: bool,
    context_BxSxD: jax.Array | None = None,
    context_mask_Bx1xLxS: jax.Array | None = None,
  ) -> jax.Array:
    attention = dict(
      num_heads=self.num_heads,
      dropout_rate=self.dropout,
      deterministic=not train,
      dtype=self.dtype,
      kernel_init=_named_general(default_kernel_init, "embed", "heads", "head_dim"),
      bias_init=_named_general(nn.initializers.zeros, "heads", "head_dim"),
      out_kernel_init=_named_general(default_kernel_init, "heads", "head_dim", "embed"),
      out_bias_init=_named_general(nn.initializers.zeros, "embed"),
    )
    h_BxLxD = _layer_norm(self.dtype)(x_BxLxD)
    h_BxLxD = nn.MultiHeadDotProductAttention(**attention, decode=self.decode, name="self_attn")(
      h_BxLxD, mask=mask_Bx1xLxL
    )
    x_BxLxD = x_BxLxD + nn.Dropout(self.dropout, deterministic=not train)(h_BxLxD)
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, RESIDUAL)
    if self.cross_attention:
      h_BxLxD = _layer_norm(self.dtype)(x_BxLxD)
      h_BxLxD = nn.MultiHeadDotProductAttention(**attention, name="cross_attn")(
        h_BxLxD, context_BxSxD, mask=context_mask_Bx1xLxS
      )
      x_BxLxD = x_BxLxD + nn.Dropout(self.dropout, deterministic=not train)(h_BxLxD)
      x_BxLxD = nn.with_logical_constraint(x_BxLxD, RESIDUAL)
    h_BxLxD = _layer_norm(self.dtype)(x_BxLxD)
    x_BxLxD = x_BxLxD + MlpBlock(self.mlp_dim, self.dropout, self.dtype)(h_BxLxD, train=train)
    return nn.with_logical_constraint(x_BxLxD, RESIDUAL)


class Embedder(nn.Module):
  """Token ids (B, L) -> token embeddings plus positions, with dropout: (B, L, D)."""

  vocab_size: int
  width: int
  max_len: int
  positions: str = "learned"
  dropout: float = 0.0
  decode: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids_BxL: jax.Array, *, train: bool) -> jax.Array:
    _check_ids(ids_BxL)
    x_BxLxD = nn.Embed(
      self.vocab_size,
      self.width,
      dtype=self.dtype,
      embedding_init=_named(default_embed_init, "vocab", "embed"),
    )(ids_BxL)
    x_BxLxD = PositionEmbedding(self.max_len, self.positions, self.decode)(x_BxLxD)
    x_BxLxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxLxD)
    return nn.with_logical_constraint(x_BxLxD, RESIDUAL)


class _Stack(nn.Module, kw_only=True):
  """The hyperparameters every model below shares (keyword-only; see `TransformerLM`)."""

  width: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  max_len: int = 512
  positions: str = "learned"
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: str = "none"

  def _embedder(self, vocab_size: int, decode: bool = False) -> "Embedder":
    """The token and position embedding of this stack."""
    return Embedder(
      vocab_size, self.width, self.max_len, self.positions, self.dropout, decode, self.dtype
    )


def _shared(module: _Stack) -> dict[str, Any]:
  """The `_Stack` hyperparameters of `module` by name, for the encoder or decoder it wraps."""
  names = [f.name for f in dataclasses.fields(_Stack) if f.name not in ("parent", "name")]
  return {name: getattr(module, name) for name in names}


class Encoder(_Stack):
  """Embeds token ids and runs `depth` bidirectional blocks; pads are masked out of attention.

  Returns the final-LayerNorm'd hidden states (B, L, D). `remat` is each block's
  rematerialisation policy (see the module docstring).
  """

  vocab_size: int

  @nn.compact
  def __call__(self, ids_BxL: jax.Array, *, train: bool) -> jax.Array:
    x_BxLxD = self._embedder(self.vocab_size)(ids_BxL, train=train)
    not_pad_BxL = ids_BxL != PAD_ID
    mask_Bx1xLxL = nn.make_attention_mask(not_pad_BxL, not_pad_BxL)
    for i in range(self.depth):
      # Named as Flax names them unwrapped ("Block_0", ...), so parameters do not move.
      block = Block(self.num_heads, self.mlp_dim, self.dropout, dtype=self.dtype, name=f"Block_{i}")
      x_BxLxD = remat(block, self.remat)(x_BxLxD, mask_Bx1xLxL, train=train)
    return _layer_norm(self.dtype)(x_BxLxD)


class TransformerClassifier(_Stack):
  """Transformer encoder classifier: token ids (B, L) -> logits (B, num_classes).

  Pad id 0 is masked out of attention and of the mean pooling, so the same tokens
  padded to any length give the same logits.

  Attributes:
    num_classes: number of output logits.
    vocab_size: number of token ids (including pad 0).
    width, depth, num_heads, mlp_dim, max_len, positions, dropout, dtype, remat: as in
      `TransformerLM` (keyword-only); `dropout` defaults to 0.1 here.
  """

  num_classes: int
  vocab_size: int = 8000
  dropout: float = dataclasses.field(default=0.1, kw_only=True)

  @nn.compact
  def __call__(self, ids_BxL: jax.Array, *, train: bool = False) -> jax.Array:
    h_BxLxD = Encoder(self.vocab_size, **_shared(self))(ids_BxL, train=train)
    weights_BxLx1 = (ids_BxL != PAD_ID).astype(h_BxLxD.dtype)[..., jnp.newaxis]
    count_Bx1 = jnp.maximum(weights_BxLx1.sum(axis=1), 1.0)
    pooled_BxD = (h_BxLxD * weights_BxLx1).sum(axis=1) / count_Bx1
    pooled_BxD = nn.Dropout(self.dropout, deterministic=not train)(pooled_BxD)
    logits_BxC = _dense(self.num_classes, self.dtype, "embed", "classes")(pooled_BxD)
    return logits_BxC.astype(jnp.float32)


class Decoder(_Stack):
  """Causal blocks over token ids, optionally cross-attending to an encoder's output.

  Returns logits (B, L, vocab_size). With `decode`, call one position (B, 1) at a time
  (blocks are then never rematerialised: there is no backward pass to save memory for).
  """

  vocab_size: int
  decode: bool = False

  @nn.compact
  def __call__(
    self,
    ids_BxL: jax.Array,
    *,
    train: bool,
    context_BxSxD: jax.Array | None = None,
    context_mask_Bx1xLxS: jax.Array | None = None,
  ) -> jax.Array:
    x_BxLxD = self._embedder(self.vocab_size, self.decode)(ids_BxL, train=train)
    # With a cache, the attention layer masks the not-yet-written positions itself.
    mask_Bx1xLxL = None if self.decode else nn.make_causal_mask(ids_BxL)
    policy = "none" if self.decode else check_policy(self.remat)
    for i in range(self.depth):
      block = Block(
        self.num_heads,
        self.mlp_dim,
        self.dropout,
        cross_attention=context_BxSxD is not None,
        decode=self.decode,
        dtype=self.dtype,
        name=f"Block_{i}",  # as Flax names it unwrapped, so parameters do not move
      )
      x_BxLxD = remat(block, policy)(
        x_BxLxD,
        mask_Bx1xLxL,
        train=train,
        context_BxSxD=context_BxSxD,
        context_mask_Bx1xLxS=context_mask_Bx1xLxS,
      )
    x_BxLxD = _layer_norm(self.dtype)(x_BxLxD)
    logits_BxLxV = _dense(self.vocab_size, self.dtype, "embed", "vocab", name="logits")(x_BxLxD)
    return nn.with_logical_constraint(logits_BxLxV, LOGITS).astype(jnp.float32)


class TransformerLM(_Stack):
  """Causal decoder-only language model: token ids (B, L) -> next-token logits (B, L, V).

  Position i's logits depend only on ids[:, :i + 1]. With `decode=True` the model keeps a
  key/value cache in the `cache` collection and takes one position (B, 1) per call.

  Attributes (all but `num_classes` keyword-only):
    num_classes: vocabulary size V (the data set's `num_classes` for next-token labels).
    width: model width D.
    depth: number of Transformer blocks.
    num_heads: attention heads (must divide `width`).
    mlp_dim: hidden units of each block's MLP.
    max_len: the longest sequence (and the cache length with `decode`).
    positions: "learned" or "sinusoidal".
    dropout: dropout rate (active only with `train=True`).
    decode: autoregressive decoding with a cache, one position per call.
    dtype: compute dtype; parameters stay float32, logits are float32.
    remat: what each block keeps for the backward pass: "none", "full" or a
      `jax.checkpoint_policies` name (`dl.models.REMAT_POLICIES`); ignored with `decode`.
  """

  num_classes: int
  decode: bool = False

  @nn.compact
  def __call__(self, ids_BxL: jax.Array, *, train: bool = False) -> jax.Array:
    return Decoder(self.num_classes, self.decode, **_shared(self))(ids_BxL, train=train)


class TransformerSeq2Seq(_Stack):
  """Encoder-decoder: source ids (B, S) and shifted target ids (B, T) -> logits (B, T, V).

  The encoder is bidirectional over the source with pads (0) masked; the decoder is causal
  over the target and cross-attends to the non-pad source positions. Teacher forcing:
  `targets_in_BxT` is the target shifted right behind a start token. For generation, call
  `encode` once and then `decode` (with `decode=True`, one position per call).

  Attributes:
    num_classes: target vocabulary size V.
    source_vocab_size: source vocabulary size; None means the same as the target's.
    width, depth, num_heads, mlp_dim, max_len, positions, dropout, dtype, remat: as in
      `TransformerLM`; encoder and decoder have `depth` blocks each.
    decode: autoregressive decoding of the target with a cache.
  """

  num_classes: int
  source_vocab_size: int | None = None
  decode: bool = False

  def setup(self):
    """Builds the encoder, the decoder and their embeddings (Flax calls it)."""
    self.encoder = Encoder(self.source_vocab_size or self.num_classes, **_shared(self))
    self.decoder = Decoder(self.num_classes, self.decode, **_shared(self))

  def __call__(
    self, sources_BxS: jax.Array, targets_in_BxT: jax.Array, *, train: bool = False
  ) -> jax.Array:
    encoded_BxSxD = self.encode(sources_BxS, train=train)
    return self.decode_step(targets_in_BxT, sources_BxS, encoded_BxSxD, train=train)

  def encode(self, sources_BxS: jax.Array, *, train: bool = False) -> jax.Array:
    """Source ids (B, S) -> encoder states (B, S, D)."""
    return self.encoder(sources_BxS, train=train)

  def decode_step(
    self,
    targets_in_BxT: jax.Array,
    sources_BxS: jax.Array,
    encoded_BxSxD: jax.Array,
    *,
    train: bool = False,
  ) -> jax.Array:
    """Target ids (B, T) (T = 1 with `decode`) and the encoding -> logits (B, T, V)."""
    not_pad_BxS = sources_BxS != PAD_ID
    queries_BxT = jnp.ones(targets_in_BxT.shape, bool)
    context_mask_Bx1xTxS = nn.make_attention_mask(queries_BxT, not_pad_BxS)
    return self.decoder(
      targets_in_BxT,
      train=train,
      context_BxSxD=encoded_BxSxD,
      context_mask_Bx1xLxS=context_mask_Bx1xTxS,
    )


def _check_ids(ids_BxL: jax.Array) -> None:
  """Raises unless the input is a (B, L) array of integer token ids."""
  if ids_BxL.ndim != 2 or not jnp.issubdtype(ids_BxL.dtype, jnp.integer):
    raise ValueError(
      f"a Transformer takes integer token ids of shape (B, L); got {ids_BxL.dtype} "
      f"{ids_BxL.shape}. Tokenise text first (pad id 0)."
    )
