"""Data augmentation as pure functions of (seed, epoch, example index): exactly resumable.

Each transform is a grain `RandomMap` (usable in any grain pipeline:
`grain.MapDataset.source(...).random_map(RandomCrop(4), seed=0)`); dl calls it with a
generator seeded from (seed, epoch, example index) for per-example transforms and from
(seed, epoch, batch index) for batch transforms (mixup). A batch is then a pure function of
its position, whichever data path made it (in memory or streamed, any number of worker
processes), so a run resumed from a checkpoint sees exactly the batches it would have seen.

  augment = (RandomCrop(padding=4), HorizontalFlip(), Mixup(alpha=0.2))
  dl.task(..., augment=augment)              # user code
  config.augment = ("crop:4", "flip", "mixup:0.2")   # a config: `from_names`

Horizontal flips are opt-in (a flipped digit is another symbol). Mixup adds the partner's
label ("mix_label") and the weight of the example's own label ("mix_weight") to the batch;
the classification objective mixes its loss with them, while accuracy keeps the own label.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import grain
import numpy as np

Example = dict[str, np.ndarray]
_EXAMPLE_STREAM, _BATCH_STREAM = 0, 1  # keep example and batch generators apart


@dataclasses.dataclass(frozen=True)
class RandomCrop(grain.transforms.RandomMap):
  """Pads an (H, W, C) image with `padding` zeros on each side and crops H x W at random."""

  padding: int = 4
  key: str = "input"

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    """The example with its image cropped at a position drawn from `rng`."""
    image_HxWxC = element[self.key]
    p = self.padding
    padded = np.pad(image_HxWxC, ((p, p), (p, p), (0, 0)))
    y, x = rng.integers(0, 2 * p + 1, size=2)
    h, w = image_HxWxC.shape[:2]
    return {**element, self.key: padded[y : y + h, x : x + w]}


@dataclasses.dataclass(frozen=True)
class RandomTranslate(grain.transforms.RandomMap):
  """Shifts an (H, W, C) image by up to `max_shift` pixels along each axis, filling zeros."""

  max_shift: int = 2
  key: str = "input"

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    """The example with its image shifted by an offset drawn from `rng`."""
    dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
    return {**element, self.key: _shift(element[self.key], int(dy), int(dx))}


@dataclasses.dataclass(frozen=True)
class HorizontalFlip(grain.transforms.RandomMap):
  """Mirrors an (H, W, C) image left to right with probability `probability`."""

  probability: float = 0.5
  key: str = "input"

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    """The example with its image mirrored left-right, with probability `p`."""
    if rng.random() >= self.probability:
      return element
    return {**element, self.key: element[self.key][:, ::-1]}


@dataclasses.dataclass(frozen=True)
class Mixup(grain.transforms.RandomMap):
  """Mixes each example of a batch with a partner from the same batch (Zhang et al., 2018).

  A batch transform: the inputs become `w * x + (1 - w) * x_partner` with `w ~ Beta(alpha,
  alpha)` per example; "mix_label" (the partner's label) and "mix_weight" (`w`) join the batch.
  """

  alpha: float = 0.2
  key: str = "input"

  def random_map(self, element: Example, rng: np.random.Generator) -> Example:
    """The example, its partner's label and the mixing weight drawn from `rng`."""
    x_BxD = element[self.key]
    partner_B = rng.permutation(len(x_BxD))
    weight_B = rng.beta(self.alpha, self.alpha, size=len(x_BxD)).astype(np.float32)
    w = weight_B.reshape(-1, *(1,) * (x_BxD.ndim - 1))
    mixed = (w * x_BxD + (1 - w) * x_BxD[partner_B]).astype(x_BxD.dtype)
    label_B = element["label"]
    return {**element, self.key: mixed, "mix_label": label_B[partner_B], "mix_weight": weight_B}


BATCH_TRANSFORMS = (Mixup,)
# Config names -> (transform, its parameter): "crop:4" is RandomCrop(padding=4).
AUGMENTATIONS = {
  "crop": (RandomCrop, "padding"),
  "translate": (RandomTranslate, "max_shift"),
  "flip": (HorizontalFlip, "probability"),
  "mixup": (Mixup, "alpha"),
}


def from_names(names: Sequence[str]) -> tuple[grain.transforms.RandomMap, ...]:
  """Transforms from config strings such as ("crop:4", "translate:2", "flip", "mixup:0.2")."""
  transforms = []
  for name in names:
    if not isinstance(name, str):
      raise TypeError(f"augmentations are named by strings such as 'crop:4'; got {name!r}.")
    kind, _, value = name.partition(":")
    if kind not in AUGMENTATIONS:
      raise ValueError(
        f"unknown augmentation {name!r}; expected one of {sorted(AUGMENTATIONS)}, optionally "
        "with a parameter after a colon (e.g. 'crop:4', 'mixup:0.2')."
      )
    cls, parameter = AUGMENTATIONS[kind]
    kind_of = type(dataclasses.fields(cls)[0].default)
    try:
      transforms.append(cls(**({parameter: kind_of(value)} if value else {})))
    except ValueError as e:
      raise ValueError(f"augmentation {name!r}: {parameter} must be a {kind_of.__name__}.") from e
  return tuple(transforms)


@dataclasses.dataclass(frozen=True)
class Augment:
  """Per-example transforms, then batch transforms, seeded from the batch's position.

  Attributes:
    transforms: `RandomMap`s applied to each example (a dict of arrays without a batch axis).
    batch_transforms: `RandomMap`s applied to the whole batch (e.g. `Mixup`).
  """

  transforms: tuple[grain.transforms.RandomMap, ...] = ()
  batch_transforms: tuple[grain.transforms.RandomMap, ...] = ()

  @classmethod
  def create(cls, transforms: Sequence[grain.transforms.RandomMap]) -> "Augment | None":
    """Sorts `transforms` into per-example and batch ones (in order); None when empty."""
    for t in transforms:
      if not callable(getattr(t, "random_map", None)):
        raise TypeError(
          f"an augmentation must be a grain.transforms.RandomMap (random_map(element, rng)); "
          f"got {type(t).__name__}."
        )
    batch = tuple(t for t in transforms if isinstance(t, BATCH_TRANSFORMS))
    return cls(tuple(t for t in transforms if t not in batch), batch) if transforms else None

  def __call__(
    self,
    batch: Mapping[str, np.ndarray],
    example_ids: np.ndarray,
    *,
    seed: int,
    epoch: int,
    index: int,
  ) -> dict[str, np.ndarray]:
    """The augmented batch at (epoch, index); `example_ids` (B,) name its examples."""
    batch = dict(batch)
    if self.transforms:
      examples = []
      for j, example_id in enumerate(example_ids):
        rng = np.random.default_rng([seed, epoch, int(example_id), _EXAMPLE_STREAM])
        example = {k: v[j] for k, v in batch.items()}
        for t in self.transforms:
          example = t.random_map(example, rng)
        examples.append(example)
      batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    rng = np.random.default_rng([seed, epoch, index, _BATCH_STREAM])
    for t in self.batch_transforms:
      batch = t.random_map(batch, rng)
    return batch


def _shift(image_HxWxC: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """The image moved down by `dy` and right by `dx` pixels (negative: up, left), zero-filled."""
  h, w = image_HxWxC.shape[:2]
  out = np.zeros_like(image_HxWxC)
  ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
  xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
  out[yd, xd] = image_HxWxC[ys, xs]
  return out
