"""Turning decoded TFDS arrays into model inputs."""

from collections.abc import Mapping

import numpy as np


def to_batch_format(arrays: Mapping[str, np.ndarray], input_key: str) -> dict[str, np.ndarray]:
  """{input_key: x, "label": y, ...} -> {"input": x, "label": y as int32 or float32}."""
  label = np.asarray(arrays["label"])
  dtype = np.float32 if np.issubdtype(label.dtype, np.floating) else np.int32
  return {"input": arrays[input_key], "label": label.astype(dtype)}


def model_input_dtype(dtype: np.dtype) -> type:
  """The dtype a model sees for stored inputs of `dtype`: int32 for integer ids (not uint8
  pixels), float32 for everything else."""
  dtype = np.dtype(dtype)
  return np.int32 if np.issubdtype(dtype, np.integer) and dtype != np.uint8 else np.float32


def as_model_input(x: np.ndarray) -> np.ndarray:
  """`x` cast to `model_input_dtype`, values unchanged (what `normalize=False` feeds)."""
  x = np.asarray(x)
  return x.astype(model_input_dtype(x.dtype))


def normalizer(train_inputs: np.ndarray):
  """Returns x -> model input: uint8 images scaled to [0, 1] float32; other integer inputs
  (token or user ids) as int32, unchanged; float inputs standardised with the mean and
  standard deviation of `train_inputs` (statistics from train only, so nothing leaks from
  evaluation data)."""
  if train_inputs.dtype == np.uint8:
    return lambda x: np.asarray(x, np.float32) / 255.0
  if model_input_dtype(train_inputs.dtype) == np.int32:
    return as_model_input
  mean = train_inputs.mean(axis=0, dtype=np.float64)
  std = train_inputs.std(axis=0, dtype=np.float64)
  std = np.where(std > 0, std, 1.0)
  return lambda x: ((np.asarray(x, np.float64) - mean) / std).astype(np.float32)
