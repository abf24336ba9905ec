"""A small ResNet with BatchNorm (model state besides params: batch statistics)."""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class ResidualBlock(nn.Module):
  """Two 3x3 convs with BatchNorm and a projected shortcut when shapes change."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
    )
    y = conv(self.features, (3, 3), strides=self.strides)(x)
    y = nn.relu(norm()(y))
    y = conv(self.features, (3, 3))(y)
    y = norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = norm()(conv(self.features, (1, 1), strides=self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet for small images: a stem conv, then stages of residual blocks.

  Attributes:
    num_classes: number of output logits.
    stage_sizes: residual blocks per stage; each stage after the first halves
      the resolution and doubles the width.
    width: channels of the stem and first stage.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters and batch statistics stay
      float32, logits are float32.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2)
  width: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    x = x_BxHxWxC.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
    x = nn.relu(x)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(self.width * 2**stage, strides, self.dtype)(x, train=train)
    x_BxC = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x_BxC).astype(jnp.float32)


ResNet8 = functools.partial(ResNet, stage_sizes=(1, 1, 1))
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), width=64)
