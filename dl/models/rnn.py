"""Recurrent models: LSTM and GRU through Flax's cells and `nn.RNN`.

`RNNEncoder` stacks uni- or bidirectional recurrent layers and ignores padded steps
through `seq_lengths`. Two heads use it:

- `TextRNN`: token ids (B, L), pad id 0 -> embedding -> encoder -> pooled over the valid
  steps -> (B, num_classes) logits. Sentiment and other text classification.
- `SeriesRNN`: float windows (B, T) or (B, T, F) -> encoder -> the last step (or a pool)
  -> (B, num_classes) outputs. Forecasting (regression) and sequence classification.

Padding: only steps t < length (length = number of non-pad ids) reach the output. The
forward direction never sees later steps; the backward direction of `nn.Bidirectional`
reverses each sequence within its length, so it starts at the last valid step; pooling
masks the rest. Outputs and gradients are therefore the same however much padding follows.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PAD_ID = 0  # the id tokenizers pad with (dl.data.text.PAD_ID); models do not import data
CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}
POOLINGS = ("mean", "max", "last", "mean_max")


class _Recurrent(nn.Module, kw_only=True):
  """The hyperparameters of `RNNEncoder`, which the heads pass on to theirs (keyword-only)."""

  cell: str = "lstm"
  hidden: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32


class RNNEncoder(_Recurrent):
  """Stacked recurrent layers over (B, L, D) inputs, padded steps ignored.

  Attributes (keyword-only):
    cell: "lstm" or "gru".
    hidden: units per direction of each layer.
    num_layers: stacked layers; layer k+1 reads layer k's outputs.
    bidirectional: read each sequence both ways (outputs of size 2 * hidden).
    dropout: dropout rate between layers (0 disables it).
    dtype: compute dtype; parameters stay float32.
  """

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, lengths_B: jax.Array, *, train: bool) -> jax.Array:
    """Returns outputs_BxLxH (H = hidden, or 2 * hidden if bidirectional)."""
    cell = _cell_class(self.cell)
    h_BxLxH = x_BxLxD.astype(self.dtype)
    for layer in range(self.num_layers):
      if layer:
        h_BxLxH = nn.Dropout(self.dropout, deterministic=not train)(h_BxLxH)
      forward = nn.RNN(cell(self.hidden, dtype=self.dtype, name=f"forward_{layer}"))
      if self.bidirectional:
        backward = nn.RNN(cell(self.hidden, dtype=self.dtype, name=f"backward_{layer}"))
        h_BxLxH = nn.Bidirectional(forward, backward)(h_BxLxH, seq_lengths=lengths_B)
      else:
        h_BxLxH = forward(h_BxLxH, seq_lengths=lengths_B)
    return h_BxLxH


class TextRNN(_Recurrent):
  """Text classifier: ids (B, L) with pad id 0 -> (B, num_classes) logits.

  Attributes:
    num_classes: number of output logits.
    vocab_size: number of token ids (the tokenizer's vocabulary, pad id 0 included).
    embed_dim: size of the token embeddings.
    cell: "lstm" or "gru".
    hidden: units per direction of each recurrent layer.
    num_layers: stacked recurrent layers.
    bidirectional: read the text both ways.
    pooling: how valid steps become one vector: "mean", "max", "last" (the output at the
      last valid step; for bidirectional layers, its backward half has read one token),
      or "mean_max" (both concatenated).
    dropout: dropout rate on the embeddings, between layers and before the output layer.
    dtype: compute dtype; parameters stay float32, logits are float32.
  """

  num_classes: int
  vocab_size: int = 8000
  embed_dim: int = 128
  pooling: str = "mean"

  @nn.compact
  def __call__(self, ids_BxL: jax.Array, *, train: bool = False) -> jax.Array:
    if ids_BxL.ndim != 2:
      raise ValueError(f"TextRNN expects token ids (B, L); got shape {ids_BxL.shape}.")
    # Integer ids; a float array of whole numbers (e.g. an init example) is cast too.
    ids_BxL = ids_BxL.astype(jnp.int32)
    mask_BxL = ids_BxL != PAD_ID
    lengths_B = mask_BxL.sum(axis=1)
    x_BxLxE = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype)(ids_BxL)
    x_BxLxE = nn.Dropout(self.dropout, deterministic=not train)(x_BxLxE)
    return _encode_and_pool(self, x_BxLxE, lengths_B, mask_BxL, train=train)


class SeriesRNN(_Recurrent):
  """Sequence regressor/classifier: windows (B, T) or (B, T, F) -> (B, num_classes).

  Attributes:
    num_classes: outputs per example (1 for a one-step forecast).
    cell: "lstm" or "gru".
    hidden: units per direction of each recurrent layer.
    num_layers: stacked recurrent layers.
    bidirectional: read the window both ways.
    pooling: "last" (the last step's output; the natural choice for forecasting),
      "mean", "max" or "mean_max".
    dropout: dropout rate between layers and before the output layer.
    dtype: compute dtype; parameters stay float32, outputs are float32.
  """

  num_classes: int
  hidden: int = dataclasses.field(default=64, kw_only=True)
  pooling: str = "last"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.ndim not in (2, 3):
      raise ValueError(f"SeriesRNN expects windows (B, T) or (B, T, F); got shape {x.shape}.")
    x_BxTxF = x[..., None] if x.ndim == 2 else x
    mask_BxT = jnp.ones(x_BxTxF.shape[:2], bool)
    lengths_B = jnp.full(x_BxTxF.shape[:1], x_BxTxF.shape[1], jnp.int32)
    return _encode_and_pool(self, x_BxTxF, lengths_B, mask_BxT, train=train)


def pool(h_BxLxH: jax.Array, mask_BxL: jax.Array, how: str) -> jax.Array:
  """Pools outputs over the valid steps (mask True) into (B, H), or (B, 2H) for "mean_max".

  A row with no valid step pools to zeros.
  """
  if how not in POOLINGS:
    raise ValueError(f"unknown pooling {how!r}; expected one of: {', '.join(POOLINGS)}.")
  m_BxLx1 = mask_BxL[..., None]
  lengths_Bx1 = mask_BxL.sum(axis=1, keepdims=True)
  if how == "last":
    last_B = jnp.maximum(lengths_Bx1[:, 0] - 1, 0)
    return jnp.take_along_axis(h_BxLxH, last_B[:, None, None], axis=1)[:, 0] * (lengths_Bx1 > 0)
  mean_BxH = jnp.where(m_BxLx1, h_BxLxH, 0).sum(axis=1) / jnp.maximum(lengths_Bx1, 1)
  if how == "mean":
    return mean_BxH
  lowest = jnp.finfo(h_BxLxH.dtype).min
  max_BxH = jnp.where(m_BxLx1, h_BxLxH, lowest).max(axis=1) * (lengths_Bx1 > 0)
  return max_BxH if how == "max" else jnp.concatenate([mean_BxH, max_BxH], axis=-1)


def _encode_and_pool(
  head: TextRNN | SeriesRNN,
  x_BxLxD: jax.Array,
  lengths_B: jax.Array,
  mask_BxL: jax.Array,
  *,
  train: bool,
) -> jax.Array:
  """A head's encoder over its inputs, pooled over the valid steps -> (B, num_classes)."""
  names = [f.name for f in dataclasses.fields(_Recurrent) if f.name not in ("parent", "name")]
  encoder = RNNEncoder(**{name: getattr(head, name) for name in names}, name="encoder")
  pooled_BxH = pool(encoder(x_BxLxD, lengths_B, train=train), mask_BxL, head.pooling)
  pooled_BxH = nn.Dropout(head.dropout, deterministic=not train)(pooled_BxH)
  return nn.Dense(head.num_classes, dtype=head.dtype)(pooled_BxH).astype(jnp.float32)


def _cell_class(name: str) -> type[nn.RNNCellBase]:
  """The Flax cell called `name`, or a ValueError listing the known ones."""
  if name not in CELLS:
    raise ValueError(f"unknown cell {name!r}; expected one of: {', '.join(CELLS)}.")
  return CELLS[name]
