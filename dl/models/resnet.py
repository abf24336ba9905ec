"""A small ResNet with BatchNorm (model state besides params: batch statistics).

Parameters carry logical axis names (`nn.with_logical_partitioning`, Flax's default inits, so
values are unchanged): conv kernels (H, W, Cin, Cout) are (None, None, "conv_in", "conv_out"),
BatchNorm scales and biases ("norm",), the classifier's kernel ("embed", "classes") and its
bias ("classes",). `remat` recomputes each residual block in the backward pass
(`dl.models.remat`).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import default_kernel_init

from dl.models.remat import remat

_CONV_INIT = nn.with_logical_partitioning(default_kernel_init, (None, None, "conv_in", "conv_out"))


def _batch_norm(train: bool, dtype: Any, scale_init=nn.initializers.ones) -> nn.BatchNorm:
  """A BatchNorm whose scale and bias are named "norm"."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    dtype=dtype,
    scale_init=nn.with_logical_partitioning(scale_init, ("norm",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
  )


class ResidualBlock(nn.Module):
  """Two 3x3 convs with BatchNorm and a projected shortcut when shapes change."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_CONV_INIT)
    norm = functools.partial(_batch_norm, train, self.dtype)
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
    remat: what each residual block keeps for the backward pass: "none", "full" or a
      `jax.checkpoint_policies` name (`dl.models.REMAT_POLICIES`).
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2)
  width: int = 16
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    x = x_BxHxWxC.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype, kernel_init=_CONV_INIT)(x)
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    index = 0
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        # Named as Flax names it unwrapped, so parameters do not move with `remat`.
        residual = ResidualBlock(
          self.width * 2**stage, strides, self.dtype, name=f"ResidualBlock_{index}"
        )
        x = remat(residual, self.remat)(x, train=train)
        index += 1
    x_BxC = jnp.mean(x, axis=(1, 2))
    logits_BxC = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      kernel_init=nn.with_logical_partitioning(default_kernel_init, ("embed", "classes")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)),
    )(x_BxC)
    return logits_BxC.astype(jnp.float32)


ResNet8 = functools.partial(ResNet, stage_sizes=(1, 1, 1))
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), width=64)
