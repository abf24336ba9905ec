"""Turning decoded TFDS arrays into model inputs."""

from collections.abc import Mapping

import numpy as np


def to_batch_format(arrays: Mapping[str, np.ndarray], input_key: str) -> dict[str, np.ndarray]:
  """{input_key: x, "label": y, ...} -> {"input": x, "label": y as int32}."""
  return {"input": arrays[input_key], "label": np.asarray(arrays["label"], np.int32)}


def normalizer(train_inputs: np.ndarray):
  """Returns x -> float32: uint8 images scaled to [0, 1]; other inputs standardised
  with the mean and standard deviation of `train_inputs` (statistics from train only,
  so nothing leaks from evaluation data)."""
  if train_inputs.dtype == np.uint8:
    return lambda x: np.asarray(x, np.float32) / 255.0
  mean = train_inputs.mean(axis=0, dtype=np.float64)
  std = train_inputs.std(axis=0, dtype=np.float64)
  std = np.where(std > 0, std, 1.0)
  return lambda x: ((np.asarray(x, np.float64) - mean) / std).astype(np.float32)
