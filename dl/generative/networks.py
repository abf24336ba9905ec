"""Encoders and decoders for images, dense and convolutional, shared by autoencoders and VAEs.

An encoder maps (B, H, W, C) to (B, features); a decoder maps (B, Z) to (B, H, W, C) logits
(pixel intensities after a sigmoid).
"""

import flax.linen as nn
import jax

from dl.generative.dcgan import pixel_shuffle


class DenseEncoder(nn.Module):
  """Flatten, one hidden ReLU layer, a linear output of `features`."""

  features: int
  hidden: int = 256

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = x_BxHxWxC.reshape((x_BxHxWxC.shape[0], -1))
    return nn.Dense(self.features)(nn.relu(nn.Dense(self.hidden)(x)))


class DenseDecoder(nn.Module):
  """One hidden ReLU layer, then one logit per pixel, shaped as `image_shape`."""

  image_shape: tuple[int, int, int]
  hidden: int = 256

  @nn.compact
  def __call__(self, z_BxZ: jax.Array) -> jax.Array:
    h, w, c = self.image_shape
    x = nn.Dense(h * w * c)(nn.relu(nn.Dense(self.hidden)(z_BxZ)))
    return x.reshape((z_BxZ.shape[0], h, w, c))


class ConvEncoder(nn.Module):
  """Two stride-2 3x3 ReLU convs (`width`, 2 x `width` channels), a linear output."""

  features: int
  width: int = 32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = nn.relu(nn.Conv(self.width, (3, 3), strides=(2, 2))(x_BxHxWxC))
    x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=(2, 2))(x))
    return nn.Dense(self.features)(x.reshape((x.shape[0], -1)))


class ConvDecoder(nn.Module):
  """Dense to (H/4, W/4, 2 x `width`), two 2x sub-pixel upsamplings to `image_shape` logits."""

  image_shape: tuple[int, int, int]
  width: int = 32

  @nn.compact
  def __call__(self, z_BxZ: jax.Array) -> jax.Array:
    h, w, c = self.image_shape
    if h % 4 or w % 4:
      raise ValueError(f"image height and width must be divisible by 4; got {h}x{w}.")
    x = nn.relu(nn.Dense(h // 4 * w // 4 * 2 * self.width)(z_BxZ))
    x = x.reshape((z_BxZ.shape[0], h // 4, w // 4, 2 * self.width))
    x = nn.relu(pixel_shuffle(nn.Conv(4 * self.width, (3, 3))(x)))
    return pixel_shuffle(nn.Conv(4 * c, (3, 3))(x))


def encoder_decoder(
  kind: str, image_shape: tuple[int, int, int], features: int, width: int
) -> tuple[nn.Module, nn.Module]:
  """A matching pair: kind "dense" (`width` hidden units) or "conv" (`width` channels)."""
  if kind == "dense":
    return DenseEncoder(features, hidden=width), DenseDecoder(tuple(image_shape), hidden=width)
  if kind == "conv":
    return ConvEncoder(features, width=width), ConvDecoder(tuple(image_shape), width=width)
  raise ValueError(f"kind must be 'dense' or 'conv'; got {kind!r}.")
