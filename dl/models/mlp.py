"""Multi-layer perceptron.

Kernels carry logical axis names (`nn.with_logical_partitioning`, Flax's default inits, so
values are unchanged) in the Megatron pattern: hidden layers alternate between splitting
their outputs and splitting their inputs over "mlp", so each pair of layers needs one
reduction and no re-layout in between. Hidden layer i's kernel is ("embed", "mlp") for
even i and ("mlp", "embed") for odd i; the output layer's is (the last hidden layer's
output name, "classes") and ("embed", "classes") without hidden layers. A bias is named
like its kernel's output axis.
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import default_kernel_init

from dl.models import activations


def _dense(features: int, names: tuple[str, str], dtype: Any) -> nn.Dense:
  """A Dense layer whose kernel is named `names` and bias `names[1]`."""
  return nn.Dense(
    features,
    dtype=dtype,
    kernel_init=nn.with_logical_partitioning(default_kernel_init, names),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
  )


class MLP(nn.Module):
  """Dense network: input, `depth` hidden layers of `width` units, output layer.

  Attributes:
    num_classes: size of the output layer (logits).
    width: units per hidden layer.
    depth: number of hidden layers.
    activation: name of a `jax.nn` activation, e.g. "relu", "gelu", "tanh".
    dropout: dropout rate after each hidden activation (0 disables it).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32, logits are float32.
  """

  num_classes: int
  width: int = 128
  depth: int = 2
  activation: str = "relu"
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxD: jax.Array, *, train: bool = False) -> jax.Array:
    act = activations.get(self.activation)
    x_BxD = x_BxD.reshape((x_BxD.shape[0], -1)).astype(self.dtype)
    names = ("mlp", "embed")
    for _ in range(self.depth):
      names = names[::-1]  # ("embed", "mlp"), ("mlp", "embed"), ...
      x_BxD = act(_dense(self.width, names, self.dtype)(x_BxD))
      x_BxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxD)
    logits_BxC = _dense(self.num_classes, (names[1], "classes"), self.dtype)(x_BxD)
    return logits_BxC.astype(jnp.float32)

  def train_flops(self, batch_shape: Sequence[int]) -> float:
    """Floating-point operations of the matrix products in one training step.

    With N the number of kernel weights, N_1 those of the first layer and B the batch:
    the forward pass costs 2·N·B, the kernels' gradients 2·N·B, and the gradients with
    respect to each layer's input 2·(N - N_1)·B, since nothing needs the gradient with
    respect to the data (XLA drops it). So (6·N - 2·N_1)·B: the common 6·N·B estimate
    counts the first layer's input gradient too and is high by 2·N_1·B (14% for
    784-1024-1024-10). Biases, activations, the loss and the optimizer update are left out
    (a fraction of a percent for a wide MLP).

    Args:
      batch_shape: the input batch's shape (B, ...); the features are all but the first axis.

    Returns:
      The count; for a wide MLP, XLA's `compiled.cost_analysis()["flops"]` of a step
      (gradient and SGD update) is within 1% of it.
    """
    batch, features = batch_shape[0], math.prod(batch_shape[1:])
    widths = [features, *[self.width] * self.depth, self.num_classes]
    kernel_sizes = [d_in * d_out for d_in, d_out in zip(widths[:-1], widths[1:])]
    return float((6 * sum(kernel_sizes) - 2 * kernel_sizes[0]) * batch)
