"""U-Net (Ronneberger, Fischer and Brox 2015): per-pixel logits from a contracting and an
expanding path joined by skip connections.

Each level halves the resolution (2x2 max pooling) and doubles the channels; the expanding
path upsamples with a 2x2 transposed convolution of stride 2, concatenates the skip of the same
resolution and convolves again. Convolutions are padded ("SAME"), so the logits have the
input's height and width, which must be divisible by 2 ** levels. Submodules are named by
their place (`down_0`, ..., `bottleneck`, `up_0`, ..., `head`), so `dl.trust.explain.grad_cam`
can name a layer, e.g. layer="bottleneck". `remat` recomputes each convolution block in the
backward pass (`dl.models.remat`) under the same names.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dl.models.remat import remat


class ConvBlock(nn.Module):
  """Two 3x3 convolutions, each followed by ReLU (GroupNorm before it when `norm`)."""

  features: int
  norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = x_BxHxWxC
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3), use_bias=not self.norm, dtype=self.dtype)(x)
      if self.norm:  # GroupNorm: the same at training and at test, whatever the batch.
        x = nn.GroupNorm(num_groups=min(8, self.features), dtype=self.dtype)(x)
      x = nn.relu(x)
    return x


class Upsample(nn.Module):
  """A 2x2 transposed convolution of stride 2, written as a 1x1 convolution to 4 x features
  channels and a depth-to-space shuffle: the same linear map (each input pixel makes its own
  2x2 output block), which XLA runs several times faster on CPU than `nn.ConvTranspose`."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    b, h, w, _ = x_BxHxWxC.shape
    x_BxHxWx4F = nn.Dense(4 * self.features, use_bias=False, dtype=self.dtype)(x_BxHxWxC)
    x = x_BxHxWx4F.reshape(b, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    bias_F = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return x.reshape(b, 2 * h, 2 * w, self.features) + bias_F.astype(self.dtype)[None, None, None]


class UNet(nn.Module):
  """A U-Net for semantic segmentation.

  Attributes:
    num_classes: K, logits per pixel (2 for foreground/background).
    features: channels at full resolution; level l has features * 2**l.
    levels: poolings between full resolution and the bottleneck.
    norm: GroupNorm after each convolution. Off by default: with it the network barely
      depends on the input's scale, so attributions along a path from a black image
      (Integrated Gradients) pile up next to black, where its few steps miss them.
    dtype: compute dtype; parameters stay float32, the logits are float32.
    remat: what each convolution block keeps for the backward pass: "none", "full" or a
      `jax.checkpoint_policies` name (`dl.models.REMAT_POLICIES`).
  """

  num_classes: int = 2
  features: int = 16
  levels: int = 3
  norm: bool = False
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    """Returns (B, H, W, num_classes) logits.

    Raises:
      ValueError: when the input is not (B, H, W, C) with H and W divisible by 2**levels.
    """
    del train  # No dropout; GroupNorm keeps no batch statistics.
    _check_input(x_BxHxWxC, self.levels)

    def block(features: int, name: str):
      return remat(ConvBlock(features, self.norm, self.dtype, name=name), self.remat)

    x = x_BxHxWxC.astype(self.dtype)
    skips = []
    for level in range(self.levels):
      x = block(self.features * 2**level, f"down_{level}")(x)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = block(self.features * 2**self.levels, "bottleneck")(x)
    for level in reversed(range(self.levels)):
      f = self.features * 2**level
      x = Upsample(f, self.dtype, name=f"upsample_{level}")(x)
      x = block(f, f"up_{level}")(jnp.concatenate([skips[level], x], axis=-1))
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32)


def _check_input(x: jax.Array, levels: int) -> None:
  """Raises a ValueError naming the shape a U-Net with `levels` poolings needs."""
  multiple = 2**levels
  if x.ndim != 4 or x.shape[1] % multiple or x.shape[2] % multiple:
    raise ValueError(
      f"UNet with levels={levels} needs images (B, H, W, C) with H and W divisible by "
      f"{multiple}; got shape {tuple(x.shape)}."
    )
