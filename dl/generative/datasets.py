"""Image data sets as float arrays in [0, 1], the scale the generative models work in, and
batch streams of several data sets zipped into one (the two domains of a CycleGAN)."""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dl import data as data_lib
from dl.data.transforms import to_batch_format


def load_images(
  name: str, split: str, *, size: int | None = None, data_dir: str | None = None
) -> dict[str, np.ndarray]:
  """A split of an image data set: {"input": float32 (N, H, W, C) in [0, 1], "label": (N,)}.

  Args:
    name: a dl data set of uint8 images ("mnist5k", "digits", ...).
    split: "train", "test", or a TFDS split expression.
    size: if given, images are resized to size x size (antialiased linear interpolation).
    data_dir: as for `dl.data.load`.
  """
  spec = data_lib.info(name, data_dir=data_dir)
  arrays = to_batch_format(data_lib.load(name, split, data_dir=data_dir), spec.input_key)
  if arrays["input"].ndim != 4 or arrays["input"].dtype != np.uint8:
    raise ValueError(
      f"{name!r} must hold uint8 images (N, H, W, C); its inputs are "
      f"{arrays['input'].dtype} {arrays['input'].shape[1:]}."
    )
  x = arrays["input"].astype(np.float32) / 255.0
  if size is not None:
    shape = (len(x), size, size, x.shape[-1])
    x = np.clip(np.asarray(jax.image.resize(x, shape, "linear", antialias=True)), 0.0, 1.0)
  return {"input": x, "label": arrays["label"]}


class ZippedBatches:
  """Several batch streams as one: `next()` is {name: stream.next()["input"]}.

  A checkpointable stream for `dl.fit` (`dl.training.protocols.Batches`): its position is every
  stream's position, so a resumed run draws the batches an uninterrupted one would. An
  epoch is one of the longest stream.
  """

  def __init__(self, streams: Mapping[str, Any]):
    self._streams = dict(streams)
    self.steps_per_epoch = max(s.steps_per_epoch for s in self._streams.values())

  def next(self, num_batches: int | None = None) -> dict[str, np.ndarray]:
    """The next batch of every stream; `num_batches` of them stacked on a leading axis."""
    return {name: stream.next(num_batches)["input"] for name, stream in self._streams.items()}

  def get_state(self) -> dict[str, Any]:
    """The position of every stream, by name: what a checkpoint saves."""
    return {name: stream.get_state() for name, stream in self._streams.items()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Moves every stream to the position `get_state` returned."""
    for name, stream in self._streams.items():
      stream.set_state(state[name])
