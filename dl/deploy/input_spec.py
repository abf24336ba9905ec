"""An export's inputs: what each raw input is, how it is preprocessed, and reading a batch.

`input_spec.json` lists the model's inputs in the order the exported function takes them:
each raw input's name, example shape and dtype, the dtype the model sees, and its
preprocessing. `preprocess.npz` holds the very `Preprocess` values training used
(`task.preprocess`), saved with `Preprocess.to_arrays` under "<input>/<array>" and applied in
numpy exactly as `dl.predict` applies them. `read_inputs` reads a batch of raw inputs from a
file (`.npz`, `.npy`, `.csv`, `.png`) as a spec expects.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from dl import inference
from dl.data.transforms import Preprocess

SPEC_FILE = "input_spec.json"
PREPROCESS_FILE = "preprocess.npz"


def input_specs(spec: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{name: (example shape, raw dtype)} of an `input_spec.json`, in the model's order."""
  return {i["name"]: (tuple(i["shape"]), np.dtype(i["dtype"])) for i in spec["inputs"]}


def export_args(task) -> list[jax.ShapeDtypeStruct]:
  """The exported function's arguments: each model input as (b, *shape), one symbolic b."""
  (b,) = jax.export.symbolic_shape("b")
  return [
    jax.ShapeDtypeStruct((b, *task.train.example()[k].shape[1:]), _model_dtype(task, k))
    for k in task.model.inputs
  ]


def _model_dtype(task, key: str) -> np.dtype:
  """The dtype the model sees for input `key` (e.g. float32, int32), as jit canonicalises it."""
  return np.dtype(jax.dtypes.canonicalize_dtype(task.train.example()[key].dtype))


def describe_inputs(task, args: Sequence[jax.ShapeDtypeStruct]) -> list[dict[str, Any]]:
  """The spec's "inputs": one entry per model input, in `export_args` order."""
  inputs = []
  for key, arg in zip(task.model.inputs, args):
    shape, dtype = task.inputs[key]
    pre = task.preprocess.get(key)
    inputs.append(
      {
        "name": key,
        "shape": list(shape),
        "dtype": np.dtype(dtype).name,
        "model_dtype": np.dtype(arg.dtype).name,
        "preprocessing": {
          "kind": pre.kind if pre else "none",
          "formula": (pre.formula if pre else "x") + ", then cast to model_dtype",
          "arrays": f"{PREPROCESS_FILE}: '{key}/<name>'" if pre else "",
        },
      }
    )
  return inputs


def save_preprocess(path: str, preprocess: Mapping[str, Preprocess]) -> None:
  """Writes each input's `Preprocess` arrays to `path` (.npz) as "<input>/<array>"."""
  arrays = {f"{k}/{a}": v for k, p in preprocess.items() for a, v in p.to_arrays().items()}
  np.savez(path, **arrays)


def load_preprocess(path: str, names: Sequence[str]) -> dict[str, Preprocess]:
  """{name: `Preprocess`} of the inputs among `names` that `save_preprocess` wrote one for."""
  stored = _read_npz(path)
  preprocess = {}
  for name in names:
    arrays = {k.split("/", 1)[1]: v for k, v in stored.items() if k.split("/", 1)[0] == name}
    if arrays:
      preprocess[name] = Preprocess.from_arrays(arrays)
  return preprocess


def read_inputs(path: str, spec: Mapping[str, Any]) -> np.ndarray | dict[str, np.ndarray]:
  """Reads a batch of raw inputs from `.npz`, `.npy`, `.csv` or `.png` as the spec expects.

  `.npz`: one array per input name, each (N, *shape) (the form for several inputs).
  A model with one input also reads: `.npy`, (N, *shape) or one example of `shape`;
  `.csv`, one example per row, `prod(shape)` numeric columns, an optional header row;
  `.png`, one image of `shape` (uint8 image models only).

  Returns:
    The array for a model with one input, else {name: array}.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: unknown format, or contents whose names, shapes or dtypes do not fit `spec`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"input file {path!r} does not exist.")
  inputs = input_specs(spec)
  ext = os.path.splitext(path)[1].lower()
  readers = {".npz": _read_npz, ".npy": _read_npy, ".csv": _read_csv, ".png": _read_png}
  if ext not in readers:
    raise ValueError(f"input must be one of {', '.join(readers)}; got {ext or 'no extension'!r}.")
  if ext != ".npz" and len(inputs) > 1:
    raise ValueError(
      f"this model takes inputs {list(inputs)}: pass a .npz file with one array per name; "
      f"got {ext!r}."
    )
  if ext == ".npz":
    batch = _read_npz(path)
  else:
    ((name, (shape, dtype)),) = inputs.items()
    batch = {name: readers[ext](path, shape, dtype)}
  inference.check_inputs(batch, inputs)
  return batch if len(inputs) > 1 else next(iter(batch.values()))


def _read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    return dict(f)


def _read_npy(path: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  del dtype
  x = np.load(path, allow_pickle=False)
  return x[np.newaxis] if x.shape == shape else x


def _read_csv(path: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  with open(path) as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  if lines and not _is_numeric_row(lines[0]):
    lines = lines[1:]  # a header
  try:
    rows = np.array([[float(v) for v in line.split(",")] for line in lines], np.float64)
  except ValueError as e:
    raise ValueError(f"{path}: expected rows of numbers separated by commas ({e}).") from e
  width = int(np.prod(shape))
  if rows.ndim != 2 or rows.shape[1] != width:
    got = rows.shape[1] if rows.ndim == 2 else "ragged rows"
    raise ValueError(f"{path}: expected {width} columns (one example of shape {shape}); got {got}.")
  if np.issubdtype(dtype, np.integer):
    info = np.iinfo(dtype)
    if np.any(rows != np.round(rows)) or rows.min() < info.min or rows.max() > info.max:
      raise ValueError(
        f"{path}: expected whole numbers in [{info.min}, {info.max}] ({dtype}); got values in "
        f"[{rows.min()}, {rows.max()}]."
      )
  return rows.astype(dtype).reshape((len(rows), *shape))


def _is_numeric_row(line: str) -> bool:
  try:
    [float(v) for v in line.split(",")]
  except ValueError:
    return False
  return True


def _read_png(path: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  from PIL import Image

  if dtype != np.uint8 or len(shape) != 3:
    raise ValueError(f"png inputs need a uint8 image model; this one takes {dtype} {shape}.")
  with Image.open(path) as image:
    pixels = np.asarray(image.convert("L") if shape[-1] == 1 else image.convert("RGB"))
    mode, size = image.mode, image.size
  pixels = pixels.reshape(*pixels.shape[:2], -1)
  if pixels.shape != shape:
    raise ValueError(
      f"{path}: expected a {shape[1]}x{shape[0]} image with {shape[2]} channel(s); got "
      f"{size[0]}x{size[1]} ({mode})."
    )
  return pixels[np.newaxis]
