"""A small ResNet with BatchNorm (model state besides params: batch statistics)."""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ResidualBlock(nn.Module):
  """Two 3x3 convs with BatchNorm and a projected shortcut when shapes change."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.features, (3, 3), strides=self.strides, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
    y = norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet for small images: a stem conv, then stages of residual blocks.

  Attributes:
    num_classes: number of output logits.
    stage_sizes: residual blocks per stage; each stage after the first halves
      the resolution and doubles the width.
    width: channels of the stem and first stage.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2)
  width: int = 16

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.Conv(self.width, (3, 3), use_bias=False)(x_BxHxWxC.astype(jnp.float32))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(self.width * 2**stage, strides)(x, train=train)
    x_BxC = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x_BxC)


ResNet8 = functools.partial(ResNet, stage_sizes=(1, 1, 1))
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), width=64)
