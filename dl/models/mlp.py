"""Multi-layer perceptron."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl.models import activations


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
    for _ in range(self.depth):
      x_BxD = act(nn.Dense(self.width, dtype=self.dtype)(x_BxD))
      x_BxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxD)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x_BxD).astype(jnp.float32)
