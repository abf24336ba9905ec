"""A small single-stage detector in the style of CenterNet ("Objects as Points", Zhou et al. 2019).

A convolutional backbone downsamples the image by `STRIDE`; two heads predict, at every cell
of that grid, a heat map logit per class (is an object's centre here?) and a box: the
sub-cell offset of the centre and the box's width and height, in grid cells.
`dl.apps.detection` turns the outputs into boxes and trains them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

STRIDE = 4
BOX_CHANNELS = 4  # offset x, offset y, width, height (grid cells)
_HEAT_PRIOR_BIAS = -2.19  # sigmoid(-2.19) = 0.1: the focal loss starts from rare positives


class CenterNet(nn.Module):
  """Conv backbone (stride 4, dilated convs for a wider view) with heat-map and box heads.

  Attributes:
    num_classes: object classes (heat-map channels).
    features: channels of the first conv; later ones have 2x and 4x as many.
    dtype: compute dtype; the output is float32.
  """

  num_classes: int
  features: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    """Returns (B, H / 4, W / 4, num_classes + 4): heat logits, then the box channels."""
    del train  # No dropout or batch statistics.
    conv = lambda f, s=1, d=1: nn.Conv(  # noqa: E731
      f, (3, 3), strides=s, kernel_dilation=d, dtype=self.dtype
    )
    f = self.features
    x = nn.relu(conv(f)(x_BxHxWxC.astype(self.dtype)))
    x = nn.relu(conv(2 * f, 2)(x))
    x = nn.relu(conv(2 * f)(x))
    x = nn.relu(conv(4 * f, 2)(x))
    for dilation in (1, 2, 4, 1):
      x = nn.relu(conv(4 * f, d=dilation)(x)) + x
    heat = nn.relu(conv(4 * f)(x))
    heat = nn.Conv(
      self.num_classes,
      (1, 1),
      dtype=self.dtype,
      bias_init=nn.initializers.constant(_HEAT_PRIOR_BIAS),
    )(heat)
    box = nn.relu(conv(4 * f)(x))
    box = nn.Conv(BOX_CHANNELS, (1, 1), dtype=self.dtype)(box)
    return jnp.concatenate([heat, box], axis=-1).astype(jnp.float32)
