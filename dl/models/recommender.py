"""Recommenders over (user, item) id pairs: biased matrix factorisation and NeuMF.

Both take int (user id, item id) pairs, 0-based, as `ids_Bx2`, or with more leading axes
(e.g. (B, C, 2): each user's C candidate items), and return (..., num_classes) scores: a
predicted rating (regression, `num_classes=1`) or a logit of "the user interacts with the
item" (implicit feedback, trained with a binary cross-entropy).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_EMBED_INIT = nn.initializers.normal(stddev=0.01)


def _split_ids(ids_Bx2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(user ids (B,), item ids (B,)) as int32 (any leading axes); inputs may arrive as floats."""
  if ids_Bx2.ndim < 2 or ids_Bx2.shape[-1] != 2:
    raise ValueError(
      f"expected (user, item) ids of shape (B, 2) or (B, ..., 2); got shape {ids_Bx2.shape}."
    )
  ids_Bx2 = ids_Bx2.astype(jnp.int32)
  return ids_Bx2[..., 0], ids_Bx2[..., 1]


class _Recommender(nn.Module):
  """The fields both recommenders share; `global_bias`, `dropout` and `dtype` keyword-only."""

  num_users: int
  num_items: int
  num_classes: int = 1
  global_bias: float = dataclasses.field(default=0.0, kw_only=True)
  dropout: float = dataclasses.field(default=0.0, kw_only=True)
  dtype: Any = dataclasses.field(default=jnp.float32, kw_only=True)


class MatrixFactorization(_Recommender):
  """Biased matrix factorisation: score = global bias + b_u + b_i + <p_u, q_i>.

  The model of Koren, Bell and Volinsky (2009), "Matrix factorization techniques for
  recommender systems", that Surprise calls SVD.

  Attributes (`global_bias`, `dropout` and `dtype` keyword-only):
    num_users: rows of the user tables.
    num_items: rows of the item tables.
    num_classes: outputs per pair; each has its own factors and biases (1 for ratings).
    dim: factors per user and item.
    global_bias: initial value of the global bias, e.g. the mean training rating.
    dropout: dropout rate on the user factors during training (0 disables it).
    dtype: compute dtype; the output is float32.
  """

  dim: int = 32

  @nn.compact
  def __call__(self, ids_Bx2: jax.Array, *, train: bool = False) -> jax.Array:
    users_B, items_B = _split_ids(ids_Bx2)
    k, c = self.dim, self.num_classes
    p_BxCxK = nn.Embed(self.num_users, c * k, embedding_init=_EMBED_INIT, name="user_factors")(
      users_B
    ).reshape(*users_B.shape, c, k)
    q_BxCxK = nn.Embed(self.num_items, c * k, embedding_init=_EMBED_INIT, name="item_factors")(
      items_B
    ).reshape(*items_B.shape, c, k)
    p_BxCxK = nn.Dropout(self.dropout, deterministic=not train)(p_BxCxK)
    b_u_BxC = nn.Embed(self.num_users, c, embedding_init=nn.initializers.zeros, name="user_bias")(
      users_B
    )
    b_i_BxC = nn.Embed(self.num_items, c, embedding_init=nn.initializers.zeros, name="item_bias")(
      items_B
    )
    mu_C = self.param("global_bias", nn.initializers.constant(self.global_bias), (c,))
    p_BxCxK, q_BxCxK = p_BxCxK.astype(self.dtype), q_BxCxK.astype(self.dtype)
    dot_BxC = jnp.einsum("...ck,...ck->...c", p_BxCxK, q_BxCxK)
    mu_1xC = mu_C.reshape((1,) * users_B.ndim + (c,))
    return (dot_BxC + b_u_BxC + b_i_BxC + mu_1xC).astype(jnp.float32)


class NeuMF(_Recommender):
  """Neural collaborative filtering (He et al. 2017): a GMF branch beside an MLP branch.

  GMF multiplies a user and an item embedding elementwise; the MLP branch concatenates two
  other embeddings and passes them through ReLU layers; a dense layer reads both.

  Attributes (`global_bias`, `dropout` and `dtype` keyword-only):
    num_users: rows of the user tables.
    num_items: rows of the item tables.
    num_classes: outputs per pair (1: a rating or a logit).
    dim: embedding size of the GMF branch.
    mlp_dims: widths of the MLP branch; its embeddings have mlp_dims[0] // 2 units each.
    global_bias: initial value of the output bias (e.g. the mean rating).
    dropout: dropout rate after each MLP layer (0 disables it).
    dtype: compute dtype; the output is float32.
  """

  dim: int = 16
  mlp_dims: Sequence[int] = (64, 32, 16)

  @nn.compact
  def __call__(self, ids_Bx2: jax.Array, *, train: bool = False) -> jax.Array:
    users_B, items_B = _split_ids(ids_Bx2)
    embed = lambda n, d, name: nn.Embed(n, d, embedding_init=_EMBED_INIT, name=name)  # noqa: E731
    gmf_BxK = embed(self.num_users, self.dim, "gmf_user")(users_B) * embed(
      self.num_items, self.dim, "gmf_item"
    )(items_B)
    half = self.mlp_dims[0] // 2
    x_BxD = jnp.concatenate(
      [
        embed(self.num_users, half, "mlp_user")(users_B),
        embed(self.num_items, half, "mlp_item")(items_B),
      ],
      axis=-1,
    ).astype(self.dtype)
    for width in self.mlp_dims[1:]:
      x_BxD = nn.relu(nn.Dense(width, dtype=self.dtype)(x_BxD))
      x_BxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxD)
    both_BxD = jnp.concatenate([gmf_BxK.astype(self.dtype), x_BxD], axis=-1)
    out = nn.Dense(
      self.num_classes, dtype=self.dtype, bias_init=nn.initializers.constant(self.global_bias)
    )
    return out(both_BxD).astype(jnp.float32)
