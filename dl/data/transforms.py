"""Turning decoded TFDS arrays into model inputs, and the preprocessing as one value.

`Preprocess` is built once from the training inputs and then used everywhere inputs become
model inputs: the training arrays, `dl.predict` and exported models (saved as arrays beside
the StableHLO and applied in numpy, bit for bit the same).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

KINDS = ("scale", "standardize", "cast")
# The batch key of the group ids that slice metrics read (`dl.trust.fairness`).
GROUP_KEY = "group"


def to_batch_format(
  arrays: Mapping[str, np.ndarray], input_key: str, group_feature: str = ""
) -> dict[str, np.ndarray]:
  """{input_key: x, "label": y, ...} -> {"input": x, "label": y as int32 or float32}, and
  {"group": the int32 ids of `group_feature`} when it is set."""
  label = np.asarray(arrays["label"])
  dtype = np.float32 if np.issubdtype(label.dtype, np.floating) else np.int32
  batch = {"input": arrays[input_key], "label": label.astype(dtype)}
  if group_feature:
    if group_feature not in arrays:
      raise ValueError(
        f"group_feature {group_feature!r} must be a feature of the data; it has {sorted(arrays)}."
      )
    batch[GROUP_KEY] = np.asarray(arrays[group_feature], np.int32)
  return batch


def model_input_dtype(dtype: np.dtype) -> type:
  """The dtype a model sees for stored inputs of `dtype`: int32 for integer ids (not uint8
  pixels), float32 for everything else."""
  dtype = np.dtype(dtype)
  return np.int32 if np.issubdtype(dtype, np.integer) and dtype != np.uint8 else np.float32


def as_model_input(x: np.ndarray) -> np.ndarray:
  """`x` cast to `model_input_dtype`, values unchanged."""
  x = np.asarray(x)
  return x.astype(model_input_dtype(x.dtype))


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocess:
  """Raw inputs -> model inputs, held as arrays.

  Attributes:
    kind: "scale" (uint8 pixels / 255 as float32), "standardize" (float features minus the
      training mean, over the training standard deviation, in float64, then float32) or
      "cast" (`as_model_input`: integer ids as int32, anything else as float32).
    arrays: "divisor" for "scale"; "mean" and "std" for "standardize".
  """

  kind: str = "cast"
  arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"preprocessing kind must be one of {KINDS}; got {self.kind!r}.")

  @classmethod
  def fit(cls, train_inputs: np.ndarray, normalize: bool = True) -> "Preprocess":
    """The preprocessing of `train_inputs`' kind, with statistics from them alone.

    uint8 images are scaled to [0, 1]; other integer inputs (token or user ids) are cast to
    int32; float inputs are standardised with the training mean and standard deviation (so
    nothing leaks from evaluation data). `normalize=False` only casts.
    """
    train_inputs = np.asarray(train_inputs)
    if not normalize or model_input_dtype(train_inputs.dtype) == np.int32:
      return cls("cast")
    if train_inputs.dtype == np.uint8:
      return cls("scale", {"divisor": np.array(255.0)})
    mean = train_inputs.mean(axis=0, dtype=np.float64)
    std = train_inputs.std(axis=0, dtype=np.float64)
    return cls("standardize", {"mean": mean, "std": np.where(std > 0, std, 1.0)})

  def __call__(self, x: np.ndarray) -> np.ndarray:
    if self.kind == "scale":
      return np.asarray(x, np.float32) / float(self.arrays["divisor"])
    if self.kind == "standardize":
      z = (np.asarray(x, np.float64) - self.arrays["mean"]) / self.arrays["std"]
      return z.astype(np.float32)
    return as_model_input(x)

  @property
  def formula(self) -> str:
    """The preprocessing in words, for an export's input spec."""
    return {
      "scale": "float32(x) / 255",
      "standardize": "float32((float64(x) - mean) / std)",
      "cast": "int32(x) for integer ids, else float32(x)",
    }[self.kind]

  def to_arrays(self) -> dict[str, np.ndarray]:
    """{"kind", **arrays}: what `np.savez` stores and `from_arrays` reads back."""
    return {"kind": np.array(self.kind), **self.arrays}

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, Any]) -> "Preprocess":
    """The `Preprocess` that `to_arrays` stored."""
    arrays = dict(arrays)
    return cls(str(arrays.pop("kind")), {k: np.asarray(v) for k, v in arrays.items()})


def preprocessed(
  arrays: Mapping[str, np.ndarray], preprocess: Mapping[str, Preprocess]
) -> dict[str, np.ndarray]:
  """Each array preprocessed if it has a `Preprocess`; 64-bit values as the 32-bit ones JAX
  computes with (unless `jax_enable_x64`)."""
  return {k: preprocess[k](v) if k in preprocess else as_32_bit(v) for k, v in arrays.items()}


def as_32_bit(x: np.ndarray) -> np.ndarray:
  """`x` with 64-bit ints and floats as 32-bit ones (unless `jax_enable_x64`)."""
  if jax.config.jax_enable_x64 or x.dtype.itemsize != 8 or x.dtype.kind not in "iuf":
    return x
  return x.astype({"i": np.int32, "u": np.uint32, "f": np.float32}[x.dtype.kind])
