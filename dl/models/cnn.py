"""The classic two-convolution network of the Flax MNIST example."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class CNN(nn.Module):
  """Two 3x3 conv + average-pool blocks, a dense hidden layer, then logits.

  Attributes:
    num_classes: number of output logits.
    features: channels of the first conv; the second has twice as many.
    hidden: units of the dense layer.
    dropout: dropout rate before the output layer (0 disables it).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32, logits are float32.
  """

  num_classes: int
  features: int = 32
  hidden: int = 256
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    x = x_BxHxWxC.astype(self.dtype)
    for features in (self.features, 2 * self.features):
      x = nn.relu(nn.Conv(features, kernel_size=(3, 3), dtype=self.dtype)(x))
      x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
    x_BxD = x.reshape((x.shape[0], -1))
    x_BxD = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x_BxD))
    x_BxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxD)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x_BxD).astype(jnp.float32)
