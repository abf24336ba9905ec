"""The `synthetic_nuclei` data set: SYNTHETIC fluorescence-microscopy images of cell nuclei.

Every image is generated from a seed; nothing is downloaded or read. Each nucleus is an
irregular ellipse: an ellipse of random semi-axes and angle whose radius is modulated by a
few random low-order harmonics (lobes, flattened sides). Nuclei are placed so that
neighbours may touch and overlap a little; where they overlap the later one is on top
(painter's order), and a nucleus left with fewer than `MIN_PIXELS` visible pixels is
dropped. The instance mask is that painted map, and the image is drawn from it, so the
masks are exactly the drawn shapes. The image then goes through what makes real nuclei
hard to segment: each nucleus has its own brightness (dim ones beside bright ones) and a
chromatin texture (smoothed noise and bright spots); the optics blur it (a Gaussian point
spread function); the illumination is uneven (a random tilted, vignetted field); there is
background haze, photon (Poisson) noise and camera read noise; the result is quantised to
uint8.

Each example:
- `image` (uint8, S x S x 1): the fluorescence image;
- `label` (uint8, S x S): the semantic mask, 1 on nuclei, 0 on background;
- `instances` (uint8, S x S): 0 on background, 1..N on the N nuclei, numbered in painting
  order;
- `num_nuclei` (int32): N.

Configs (`synthetic_nuclei/<name>`): `64` (the default: 64x64 images, 1,000 train / 250
test) and `tiny` (32x32, 12 / 6, for tests). Examples are generated from
`(split seed, index)`, so a split's examples do not depend on how many there are.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

from dl.data.builders import base

MIN_PIXELS = 8  # Nuclei with fewer visible pixels are dropped (not drawn, not in the masks).
MAX_NUCLEI = 255  # Instance ids are uint8.
_SEEDS = {"train": 1, "test": 2}
_TRIES = 20  # Positions tried per nucleus before it is left out.


@dataclasses.dataclass(kw_only=True)
class NucleiConfig(tfds.core.BuilderConfig):
  """Image size, split sizes and how many nuclei of what size.

  Attributes:
    image_size: S, the side of the square images in pixels.
    num_train: examples in `train`.
    num_test: examples in `test`.
    nuclei_per_4096_px: (min, max) nuclei tried per 64x64 pixels of image.
    radius: (min, max) of an ellipse's long semi-axis, in pixels.
  """

  image_size: int = 64
  num_train: int = 1000
  num_test: int = 250
  nuclei_per_4096_px: tuple[int, int] = (4, 14)
  radius: tuple[float, float] = (4.0, 8.0)


@dataclasses.dataclass(frozen=True)
class Nucleus:
  """One irregular ellipse, in pixel coordinates (pixel (i, j) has centre (x=j, y=i)).

  Attributes:
    x, y: centre.
    a, b: semi-axes along the angle and across it.
    angle: of the `a` axis, radians counter-clockwise from +x (with y pointing down).
    harmonics: (K, 3) rows (order k, relative amplitude, phase): the radius at polar angle
      phi (relative to `angle`) is the ellipse's times 1 + sum(amplitude cos(k phi + phase)).
  """

  x: float
  y: float
  a: float
  b: float
  angle: float
  harmonics: np.ndarray


class SyntheticNuclei(base.Builder):
  """SYNTHETIC fluorescence nuclei with semantic and instance masks, generated from seeds."""

  DESCRIPTION = """
SYNTHETIC fluorescence-microscopy images of cell nuclei, GENERATED from seeds (no real
microscope images): textured, touching, irregular ellipses of varied brightness, blurred
by a Gaussian point spread function, under uneven illumination, with background haze,
Poisson and read noise, quantised to uint8. Ground truth: a semantic mask (`label`) and an
instance mask (`instances`), which are exactly the shapes drawn.
"""
  BUILDER_CONFIGS = [
    NucleiConfig(name="64", description="64x64 images, 1,000 train / 250 test"),
    NucleiConfig(
      name="tiny",
      description="32x32 images, 12 train / 6 test (for tests)",
      image_size=32,
      num_train=12,
      num_test=6,
    ),
  ]
  DEFAULT_CONFIG_NAME = "64"
  DISABLE_SHUFFLING = True  # example i of a split is the one drawn from (seed, i)

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The image, its semantic and instance masks and the number of nuclei."""
    s = self.builder_config.image_size
    return {
      "image": tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8),
      "label": tfds.features.Tensor(shape=(s, s), dtype=np.uint8),
      "instances": tfds.features.Tensor(shape=(s, s), dtype=np.uint8),
      "num_nuclei": tfds.features.Scalar(dtype=np.int32),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # Generated.
    c = self.builder_config
    return {
      "train": self._generate_examples("train", c.num_train),
      "test": self._generate_examples("test", c.num_test),
    }

  def _generate_examples(self, split: str, count: int) -> Iterator[tuple[int, dict]]:
    """Yields (index, example) for the split's images."""
    for i in range(count):
      yield i, make_example(np.random.default_rng([_SEEDS[split], i]), self.builder_config)


def make_example(rng: np.random.Generator, config: NucleiConfig) -> dict[str, np.ndarray | int]:
  """One example (see the module docstring) drawn with `rng`."""
  s = config.image_size
  instances = paint(sample_nuclei(rng, config), s)
  image = render(instances, rng)
  return {
    "image": image[:, :, None],
    "label": (instances > 0).astype(np.uint8),
    "instances": instances,
    "num_nuclei": int(instances.max()),
  }


def sample_nuclei(rng: np.random.Generator, config: NucleiConfig) -> list[Nucleus]:
  """Nuclei placed so that neighbours touch or overlap a little, never much."""
  s = config.image_size
  lo, hi = config.nuclei_per_4096_px
  wanted = round(rng.integers(lo, hi + 1) * s * s / 4096)
  nuclei: list[Nucleus] = []
  for _ in range(max(wanted, 1)):
    a = rng.uniform(*config.radius)
    b = a * rng.uniform(0.6, 1.0)
    angle = rng.uniform(0.0, np.pi)
    orders = np.arange(2, 6)
    harmonics = np.stack(
      [orders, rng.uniform(0.0, 0.12, 4) / (orders - 1), rng.uniform(0, 2 * np.pi, 4)], axis=1
    )
    for _ in range(_TRIES):
      x, y = rng.uniform(0, s - 1, 2)
      gaps = [np.hypot(x - n.x, y - n.y) / ((a + b + n.a + n.b) / 2) for n in nuclei]
      if not gaps or min(gaps) > 0.8:  # < 1: the two ellipses may touch or overlap
        nuclei.append(Nucleus(x, y, a, b, angle, harmonics))
        break
  return nuclei


def shape_mask(nucleus: Nucleus, size: int) -> np.ndarray:
  """(size, size) bool: the pixels whose centres lie inside the nucleus's outline."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float64)
  dx, dy = x - nucleus.x, y - nucleus.y
  # Along the `a` axis and across it; y points down, so counter-clockwise on screen is -y.
  u = dx * np.cos(nucleus.angle) - dy * np.sin(nucleus.angle)
  v = dx * np.sin(nucleus.angle) + dy * np.cos(nucleus.angle)
  phi = np.arctan2(v, u)
  a, b = nucleus.a, nucleus.b
  ellipse = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
  k, amplitude, phase = (nucleus.harmonics[:, i, None, None] for i in range(3))
  radius = ellipse * (1.0 + np.sum(amplitude * np.cos(k * phi + phase), axis=0))
  return np.hypot(u, v) < radius


def paint(nuclei: list[Nucleus], size: int) -> np.ndarray:
  """(size, size) uint8 instance ids: each nucleus over the earlier ones, tiny leftovers
  dropped, the rest numbered 1..N in painting order."""
  painted = np.zeros((size, size), np.int32)
  for i, nucleus in enumerate(nuclei[:MAX_NUCLEI], start=1):
    painted[shape_mask(nucleus, size)] = i
  ids, counts = np.unique(painted[painted > 0], return_counts=True)
  kept = ids[counts >= MIN_PIXELS]
  renumber = np.zeros(len(nuclei) + 1, np.uint8)
  renumber[kept] = np.arange(1, len(kept) + 1)
  return renumber[painted]


def render(instances: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The uint8 fluorescence image of an instance map (see the module docstring)."""
  s = instances.shape[0]
  n = int(instances.max())
  brightness = np.concatenate([[0.0], rng.uniform(0.3, 1.0, n)])
  texture = 1.0 + 0.6 * ndimage.gaussian_filter(rng.normal(size=(s, s)), 1.2)
  spots = ndimage.gaussian_filter((rng.uniform(size=(s, s)) < 0.02).astype(float), 0.7)
  signal = brightness[instances] * np.clip(texture + 3.0 * spots, 0.2, None)
  signal = ndimage.gaussian_filter(signal, rng.uniform(0.7, 1.4))  # the optics' blur
  y, x = np.mgrid[0:s, 0:s] / s - 0.5
  gx, gy, vignette = rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7), rng.uniform(0.0, 1.2)
  illumination = np.clip(1.0 + gx * x + gy * y - vignette * (x**2 + y**2), 0.25, None)
  haze = rng.uniform(0.03, 0.12) * (1.0 + ndimage.gaussian_filter(rng.normal(size=(s, s)), s / 8))
  photons = rng.uniform(40, 400)  # at full brightness: fewer photons, more shot noise
  expected = np.clip((signal + haze) * illumination, 0.0, None)
  counted = rng.poisson(expected * photons) / photons
  noisy = counted + rng.normal(0.0, rng.uniform(0.005, 0.03), (s, s))
  return np.clip(np.round(noisy * 200.0), 0, 255).astype(np.uint8)
