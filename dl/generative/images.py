"""Image grids as PNG files (matplotlib, headless)."""

import os

import numpy as np
from matplotlib.figure import Figure


def save_grid(
  path: str,
  images_NxHxWxC: np.ndarray,
  *,
  num_cols: int,
  value_range: tuple[float, float] = (0.0, 1.0),
  row_labels: list[str] | None = None,
  title: str = "",
) -> str:
  """Saves images as one grid PNG, row by row; returns `path`.

  Args:
    path: the PNG to write (its folder is created).
    images_NxHxWxC: N images, C = 1 (grey) or 3; N a multiple of `num_cols`.
    num_cols: images per row.
    value_range: (black, white) of the pixel values, e.g. (-1, 1) for a tanh generator.
    row_labels: optional text left of each row.
    title: optional figure title.
  """
  images = np.asarray(images_NxHxWxC, np.float32)
  if images.ndim != 4 or len(images) % num_cols:
    raise ValueError(
      f"images must be (N, H, W, C) with N a multiple of num_cols={num_cols}; got {images.shape}."
    )
  lo, hi = value_range
  images = np.clip((images - lo) / (hi - lo), 0.0, 1.0)
  num_rows = len(images) // num_cols
  n, h, w, c = images.shape
  tiles = images.reshape((num_rows, num_cols, h, w, c)).transpose((0, 2, 1, 3, 4))
  canvas = tiles.reshape((num_rows * h, num_cols * w, c))
  fig = Figure(figsize=(0.5 + 0.45 * num_cols, 0.3 + 0.45 * num_rows))
  ax = fig.add_subplot()
  ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray", vmin=0.0, vmax=1.0)
  ax.set_xticks([])
  ax.set_yticks([h * (i + 0.5) for i in range(num_rows)] if row_labels else [])
  if row_labels:
    ax.set_yticklabels(row_labels)
  if title:
    ax.set_title(title, fontsize=9)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  return path
