"""Image data sets as float arrays in [0, 1], the scale the generative models work in."""

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
