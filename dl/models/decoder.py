"""A modern decoder-only language model: RoPE, grouped-query attention, RMSNorm, SwiGLU.

`DecoderLM` is the LLaMA-style counterpart of `dl.models.TransformerLM`: pre-RMSNorm blocks
`x + attn(norm(x))`, `x + mlp(norm(x))`, rotary positions (Su et al. 2021) on queries and
keys instead of a position table, `num_kv_heads <= num_heads` key/value heads shared by groups
of query heads (Ainslie et al. 2023), a SwiGLU MLP (Shazeer 2020) and no biases. Attention
goes through `jax.nn.dot_product_attention`, which takes the fewer key/value heads as they
are.

Sharding: every kernel is annotated with logical axis names (`nn.with_logical_partitioning`)
and the activations are constrained with logical names (`nn.with_logical_constraint`), so
the same module runs data, FSDP or Megatron-style tensor parallel depending on the rules
it is applied under (`nn.logical_axis_rules`); outside a mesh the constraints do nothing.

  kernels:     "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm"
  activations: "act_batch", "act_length", "act_embed", "act_heads", "act_kv_heads",
               "act_head_dim", "act_mlp", "act_vocab"

With `decode=True` the model keeps a key/value cache in Flax's `cache` collection, with the
protocol of `TransformerLM` (so `dl.apps.decoding.sample` drives it): initialise with the
full-length ids to size the cache, then call one position (B, 1) at a time.

Axis letters: B batch, L sequence (queries), S cached positions, D width, N query heads,
K key/value heads, H head dim, R rotation pairs (H / 2), F MLP hidden units, V vocabulary.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl.models.remat import remat

RESIDUAL = ("act_batch", "act_length", "act_embed")
QUERIES = ("act_batch", "act_length", "act_heads", "act_head_dim")
KEYS = ("act_batch", "act_length", "act_kv_heads", "act_head_dim")
HIDDEN = ("act_batch", "act_length", "act_mlp")
LOGITS = ("act_batch", "act_length", "act_vocab")


def rope(x_BxLxNxH: jax.Array, positions_L: jax.Array, base: float) -> jax.Array:
  """Rotates each pair (x[..., r], x[..., r + H/2]) by angle `position * base**(-2r/H)`.

  The "rotate half" layout of GPT-NeoX and LLaMA: the dot product of a rotated query and a
  rotated key depends on their positions only through the difference.
  """
  pairs = x_BxLxNxH.shape[-1] // 2
  inverse_freqs_R = base ** (-jnp.arange(pairs, dtype=jnp.float32) / pairs)
  angles_LxR = positions_L.astype(jnp.float32)[:, jnp.newaxis] * inverse_freqs_R[jnp.newaxis]
  sin_1xLx1xR = jnp.sin(angles_LxR)[jnp.newaxis, :, jnp.newaxis]
  cos_1xLx1xR = jnp.cos(angles_LxR)[jnp.newaxis, :, jnp.newaxis]
  # In float32: bf16 angles lose the low bits of large positions.
  first_BxLxNxR, second_BxLxNxR = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  rotated_BxLxNxH = jnp.concatenate(
    [
      first_BxLxNxR * cos_1xLx1xR - second_BxLxNxR * sin_1xLx1xR,
      second_BxLxNxR * cos_1xLx1xR + first_BxLxNxR * sin_1xLx1xR,
    ],
    axis=-1,
  )
  return rotated_BxLxNxH.astype(x_BxLxNxH.dtype)


def _kernel_init(names: tuple[str, ...], init=nn.initializers.lecun_normal()):
  """`init` annotated with logical axis names, one per kernel dimension."""
  return nn.with_logical_partitioning(init, names)


def _einsum(equation: str, shape: tuple[int, ...], names: tuple[str, ...], dtype: Any, name: str):
  """A bias-free `nn.Einsum` with logical axis names; LeCun fan-in over the contracted axes."""
  operands, result = equation.split("->")
  kernel_axes = operands.split(",")[1]
  init = nn.initializers.lecun_normal(
    in_axis=tuple(i for i, a in enumerate(kernel_axes) if a not in result),
    out_axis=tuple(i for i, a in enumerate(kernel_axes) if a in result),
  )
  return nn.Einsum(
    shape, equation, use_bias=False, dtype=dtype, kernel_init=_kernel_init(names, init), name=name
  )


def _rms_norm(dtype: Any, name: str) -> nn.RMSNorm:
  """RMSNorm with its (D,) scale annotated "norm"; statistics in float32 whatever `dtype`."""
  scale_init = _kernel_init(("norm",), nn.initializers.ones)
  return nn.RMSNorm(dtype=dtype, scale_init=scale_init, name=name)


class Attention(nn.Module):
  """Causal grouped-query self-attention with rotary positions and an optional KV cache.

  Attributes:
    num_heads: query heads N.
    num_kv_heads: key/value heads K; N must be a multiple of K.
    head_dim: H, the width of each head (even, for the rotation pairs).
    rope_base: the base of the rotary frequencies.
    decode: cache keys and values; after the sizing init, each call appends its positions.
    dtype: compute dtype.
    implementation: `jax.nn.dot_product_attention`'s backend ("xla", "cudnn" or None).
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_base: float = 10_000.0
  decode: bool = False
  dtype: Any = jnp.float32
  implementation: str | None = None

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    length, width = x_BxLxD.shape[1:]
    heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
    # nn.Einsum rather than nn.DenseGeneral: DenseGeneral initialises a flattened 2-D kernel,
    # which its 3-name logical annotation cannot constrain under a mesh.
    q_kernel = ((width, heads, head_dim), ("embed", "heads", "head_dim"))
    kv_kernel = ((width, kv_heads, head_dim), ("embed", "kv_heads", "head_dim"))
    q_BxLxNxH = _einsum("BLD,DNH->BLNH", *q_kernel, self.dtype, "q")(x_BxLxD)
    k_BxLxKxH = _einsum("BLD,DKH->BLKH", *kv_kernel, self.dtype, "k")(x_BxLxD)
    v_BxLxKxH = _einsum("BLD,DKH->BLKH", *kv_kernel, self.dtype, "v")(x_BxLxD)

    start = 0
    cached = self.decode and self.has_variable("cache", "key")
    if self.decode:
      # The sizing init (cache not yet made) runs the full sequence like training does.
      cache = self._cache(k_BxLxKxH)
      start = cache["index"].value if cached else 0
    positions_L = start + jnp.arange(length)
    q_BxLxNxH = nn.with_logical_constraint(rope(q_BxLxNxH, positions_L, self.rope_base), QUERIES)
    k_BxLxKxH = nn.with_logical_constraint(rope(k_BxLxKxH, positions_L, self.rope_base), KEYS)
    v_BxLxKxH = nn.with_logical_constraint(v_BxLxKxH, KEYS)

    if cached:
      out_BxLxNxH = self._attend_cached(cache, q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, positions_L)
    else:
      out_BxLxNxH = jax.nn.dot_product_attention(
        q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, is_causal=True, implementation=self.implementation
      )
    out_BxLxNxH = nn.with_logical_constraint(out_BxLxNxH, QUERIES)
    out_kernel = ((heads, head_dim, width), ("heads", "head_dim", "embed"))
    return _einsum("BLNH,NHD->BLD", *out_kernel, self.dtype, "out")(out_BxLxNxH)

  def _cache(self, k_BxSxKxH: jax.Array) -> dict[str, Any]:
    """The `cache` variables, sized (at init) by the full-length keys."""
    shape, dtype = k_BxSxKxH.shape, k_BxSxKxH.dtype
    return {
      "key": self.variable("cache", "key", jnp.zeros, shape, dtype),
      "value": self.variable("cache", "value", jnp.zeros, shape, dtype),
      "index": self.variable("cache", "index", lambda: jnp.array(0, jnp.int32)),
    }

  def _attend_cached(self, cache, q_BxLxNxH, k_BxLxKxH, v_BxLxKxH, positions_L) -> jax.Array:
    """Writes the new keys and values at the cache index; attends to every position so far."""
    start = cache["index"].value
    cache["key"].value = jax.lax.dynamic_update_slice_in_dim(
      cache["key"].value, k_BxLxKxH, start, axis=1
    )
    cache["value"].value = jax.lax.dynamic_update_slice_in_dim(
      cache["value"].value, v_BxLxKxH, start, axis=1
    )
    cache["index"].value = start + q_BxLxNxH.shape[1]
    cached_len = cache["key"].value.shape[1]
    # Causal within the new positions too, so a chunk of L > 1 positions also works.
    visible_LxS = jnp.arange(cached_len)[jnp.newaxis, :] <= positions_L[:, jnp.newaxis]
    return jax.nn.dot_product_attention(
      q_BxLxNxH,
      cache["key"].value,
      cache["value"].value,
      mask=visible_LxS[jnp.newaxis, jnp.newaxis],
      implementation=self.implementation,
    )


class SwiGLU(nn.Module):
  """`down(silu(gate(x)) * up(x))`, no biases."""

  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype)
    into = dict(kernel_init=_kernel_init(("embed", "mlp")))
    gate_BxLxF = dense(self.mlp_dim, **into, name="gate")(x_BxLxD)
    up_BxLxF = dense(self.mlp_dim, **into, name="up")(x_BxLxD)
    h_BxLxF = nn.with_logical_constraint(nn.silu(gate_BxLxF) * up_BxLxF, HIDDEN)
    width = x_BxLxD.shape[-1]
    return dense(width, kernel_init=_kernel_init(("mlp", "embed")), name="down")(h_BxLxF)


class Block(nn.Module):
  """A pre-RMSNorm block: `x + attn(norm(x))`, then `x + mlp(norm(x))`; see `DecoderLM`."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_base: float = 10_000.0
  dropout: float = 0.0
  decode: bool = False
  dtype: Any = jnp.float32
  implementation: str | None = None

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, *, train: bool) -> jax.Array:
    drop = nn.Dropout(self.dropout, deterministic=not train)
    h_BxLxD = _rms_norm(self.dtype, "attn_norm")(x_BxLxD)
    h_BxLxD = Attention(
      self.num_heads,
      self.num_kv_heads,
      self.head_dim,
      self.rope_base,
      self.decode,
      self.dtype,
      self.implementation,
      name="attn",
    )(h_BxLxD)
    x_BxLxD = nn.with_logical_constraint(x_BxLxD + drop(h_BxLxD), RESIDUAL)
    h_BxLxD = _rms_norm(self.dtype, "mlp_norm")(x_BxLxD)
    h_BxLxD = SwiGLU(self.mlp_dim, self.dtype, name="mlp")(h_BxLxD)
    return nn.with_logical_constraint(x_BxLxD + drop(h_BxLxD), RESIDUAL)


class DecoderLM(nn.Module):
  """Causal decoder-only LM with RoPE, GQA, RMSNorm and SwiGLU: ids (B, L) -> logits (B, L, V).

  Position i's logits depend only on ids[:, :i + 1]. Token id 0 (pad) is an ordinary token
  here, as in `TransformerLM`: causal attention never lets a right pad reach earlier positions.
  With `decode=True` the model keeps a key/value cache in the `cache` collection: initialise
  it with the full-length ids (B, T), then call one position (B, 1) per step.

  Attributes:
    num_classes: vocabulary size V.
    width: model width D (a multiple of `num_heads`).
    depth: number of blocks.
    num_heads: query heads N; the head width is D / N (even).
    num_kv_heads: key/value heads K (N a multiple of K): N is multi-head attention, 1 is
      multi-query attention, in between grouped-query attention.
    mlp_dim: hidden units F of each SwiGLU MLP (three D x F kernels).
    max_len: the longest sequence (and the longest cache with `decode`).
    dropout: dropout rate on the embeddings and on each residual branch (only with
      `train=True`); attention weights are not dropped (`jax.nn.dot_product_attention` has no
      dropout).
    decode: autoregressive decoding with a cache, one position per call.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32, logits are float32.
    remat: recompute each block in the backward pass by this `dl.models.remat` policy
      ("none", "full", "dots_saveable", ...); parameters are the same under every policy.
    rope_base: the base of the rotary frequencies.
    tie_embeddings: compute the logits with the token embedding (transposed) instead of a
      separate output kernel.
    attention_implementation: `jax.nn.dot_product_attention`'s `implementation`: None (in jax
      0.10.2 this is XLA on every platform), "xla", or "cudnn" (GPU flash attention, bf16/fp16).
  """

  num_classes: int
  width: int = 64
  depth: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  mlp_dim: int = 172  # about 8/3 * width: the parameters of a 4 * width GELU MLP
  max_len: int = 512
  dropout: float = 0.0
  decode: bool = False
  dtype: Any = jnp.float32
  remat: str = "none"
  rope_base: float = 10_000.0
  tie_embeddings: bool = False
  attention_implementation: str | None = None

  @nn.compact
  def __call__(self, ids_BxL: jax.Array, *, train: bool = False) -> jax.Array:
    self._check(ids_BxL)
    embed = nn.Embed(
      self.num_classes,
      self.width,
      dtype=self.dtype,
      embedding_init=_kernel_init(("vocab", "embed"), nn.linear.default_embed_init),
      name="embed",
    )
    x_BxLxD = nn.with_logical_constraint(embed(ids_BxL), RESIDUAL)
    x_BxLxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxLxD)
    for i in range(self.depth):
      block = Block(
        self.num_heads,
        self.num_kv_heads,
        self.width // self.num_heads,
        self.mlp_dim,
        self.rope_base,
        self.dropout,
        self.decode,
        self.dtype,
        self.attention_implementation,
        name=f"block_{i}",
      )
      x_BxLxD = remat(block, self.remat)(x_BxLxD, train=train)
    x_BxLxD = _rms_norm(self.dtype, "final_norm")(x_BxLxD)
    if self.tie_embeddings:
      # Unit-scale logits at init: default_embed_init draws rows with variance 1 / D.
      logits_BxLxV = embed.attend(x_BxLxD)
    else:
      logits_BxLxV = nn.Dense(
        self.num_classes,
        use_bias=False,
        dtype=self.dtype,
        kernel_init=_kernel_init(("embed", "vocab")),
        name="logits",
      )(x_BxLxD)
    return nn.with_logical_constraint(logits_BxLxV.astype(jnp.float32), LOGITS)

  def train_flops(self, batch_shape: tuple[int, int]) -> float:
    """Model FLOPs of one training step (forward and backward) on ids of shape (B, L).

    `6 * P * B * L` for the P parameters of the matrix products (the q, k, v, out and three
    MLP kernels of every block, and the D x V output projection, counted even when tied;
    the embedding lookup is a gather, not a product), plus `6 * 2 * B * L * L * N * H * depth`
    for the two attention products (scores and weighted values). Causal attention is counted
    in full, L x L, as PaLM (Chowdhery et al. 2022, appendix B) and MaxText do, and as XLA's
    attention computes it (it masks the upper triangle, it does not skip it). Norms, softmax
    and the loss are left out, and so is the recomputation of `remat` (these are model FLOPs,
    not hardware FLOPs).

    Args:
      batch_shape: (B, L), the shape of a batch of token ids.

    Returns:
      The FLOPs, as a float.
    """
    batch, length = batch_shape
    head_dim = self.width // self.num_heads
    attention = self.width * head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.width * self.mlp_dim
    matmul_params = self.depth * (attention + mlp) + self.width * self.num_classes
    tokens = batch * length
    scores_and_values = 2 * 2 * tokens * length * self.num_heads * head_dim * self.depth
    return float(6 * matmul_params * tokens + 3 * scores_and_values)

  def _check(self, ids_BxL: jax.Array) -> None:
    """Raises for inputs or hyperparameters that do not fit together."""
    if ids_BxL.ndim != 2 or not jnp.issubdtype(ids_BxL.dtype, jnp.integer):
      raise ValueError(
        f"DecoderLM takes integer token ids of shape (B, L); got {ids_BxL.dtype} "
        f"{ids_BxL.shape}. Tokenise text first (pad id 0)."
      )
    if ids_BxL.shape[1] > self.max_len:
      raise ValueError(
        f"sequence length {ids_BxL.shape[1]} exceeds max_len={self.max_len}; raise max_len."
      )
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise ValueError(
        f"width {self.width} must be num_heads ({self.num_heads}) times an even head width "
        "(rotary positions rotate pairs of features)."
      )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
        f"({self.num_kv_heads}): each key/value head serves a group of query heads."
      )
