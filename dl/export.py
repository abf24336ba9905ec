"""Exported models: StableHLO that reloads with jax and numpy alone, a run card, drift references.

`export(task, state, directory)` writes:

- `model.stablehlo`: `jax.export` of preprocessed float32 inputs (b, *input_shape) -> logits
  (b, num_classes), params baked in, batch dimension `b` symbolic (any batch size).
- `embed.stablehlo`: the same inputs -> penultimate features (the input of the model's last
  Dense layer), what image and text drift checks compare.
- `preprocess.npz` and `input_spec.json`: the raw input's shape and dtype, and the
  preprocessing as arrays, applied in numpy exactly as `dl.predict` does.
- `drift_reference.npz`: reference statistics of the training data (raw features for tabular
  data, embeddings otherwise), see `dl.monitor`.
- `run_card.json`: config, data fingerprint, seeds, metrics, library versions.
- `saved_model/`: a TF SavedModel (jax2tf), only when TensorFlow is installed.

Reloading needs no model code (`jax.export.deserialize(...).call(x)`); `load` wraps that with
input checks, preprocessing, softmax and drift checks.
"""

import dataclasses
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dl import monitor

FORMAT = "dl.export/1"
MODEL_FILE = "model.stablehlo"
EMBED_FILE = "embed.stablehlo"
SPEC_FILE = "input_spec.json"
PREPROCESS_FILE = "preprocess.npz"
REFERENCE_FILE = "drift_reference.npz"
CARD_FILE = "run_card.json"
SAVED_MODEL_DIR = "saved_model"
_VERSIONED = ("dl", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy")
_PRIVACY_WORDS = ("epsilon", "delta", "noise_multiplier", "privacy")


def export(
  task,
  state,
  directory: str,
  *,
  batch_sizes: Sequence[int] = (1, 32),
  workdir: str | None = None,
  class_names: Sequence[str] | None = None,
  platforms: Sequence[str] | None = None,
  saved_model: bool | None = None,
) -> str:
  """Exports a trained model's inference function, its run card and drift references.

  Args:
    task: from `dl.build(config)` (one model, not an ensemble).
    state: the trained state, e.g. from `dl.train` or `dl.restore`.
    directory: where the artifact goes (created; existing files are overwritten).
    batch_sizes: the export has a symbolic batch dimension; it is reloaded and checked to
      give `dl.predict`'s probabilities exactly at each of these batch sizes.
    workdir: the run's workdir: its `metrics.jsonl` supplies the card's metrics (the last
      eval record, slice metrics and privacy budget when present). Without it, the card
      holds `dl.evaluate` on the eval split.
    class_names: one name per class (default: the data set's label names).
    platforms: `jax.export` lowering platforms, e.g. ("cpu", "cuda") (default: this
      backend, which the list must include for the check against `dl.predict`).
    saved_model: also write a TF SavedModel: None when TensorFlow is installed, True
      always (ImportError without TensorFlow), False never.

  Returns:
    `directory`.

  Raises:
    ValueError: for an ensemble, or class names that do not match the classes.
    RuntimeError: if the reloaded export does not reproduce `dl.predict`.
  """
  from dl import trainer  # Training sits below export in the house plan; imported on use.

  if task.ensemble:
    raise ValueError(f"export takes one model; got an ensemble of {len(task.members)} members.")
  if saved_model and not importlib.util.find_spec("tensorflow"):
    raise ImportError("saved_model=True needs TensorFlow (pip install tensorflow); not installed.")
  spec, c = task.spec, task.config
  raw_train = _raw_inputs(c, c.train_split)
  preprocessing = _preprocessing(raw_train, c.normalize)
  if not np.array_equal(_preprocess(preprocessing, raw_train), task.train["input"]):
    raise RuntimeError("the saved preprocessing does not reproduce task.preprocess on train data.")
  names = list(class_names) if class_names is not None else _class_names(c, spec)
  if len(names) != spec.num_classes:
    raise ValueError(f"expected {spec.num_classes} class names; got {len(names)}: {names}.")
  os.makedirs(directory, exist_ok=True)
  logits_fn, embed_fn = _serving_functions(task.model, state)
  for name, fn in ((MODEL_FILE, logits_fn), (EMBED_FILE, embed_fn)):
    exported = _export_fn(fn, spec.input_shape, platforms)
    with open(os.path.join(directory, name), "wb") as f:
      f.write(exported.serialize())
  np.savez(os.path.join(directory, PREPROCESS_FILE), **preprocessing)
  input_spec = _input_spec(spec, preprocessing, names)
  _write_json(os.path.join(directory, SPEC_FILE), input_spec)
  ref = _drift_reference(input_spec, raw_train, preprocessing, jax.jit(embed_fn))
  ref.save(os.path.join(directory, REFERENCE_FILE))
  card = run_card(task, state, workdir=workdir)
  card["export"] = {
    "format": FORMAT,
    "batch_dimension": "symbolic",
    "platforms": list(platforms or [jax.default_backend()]),
    "drift_reference": {"kind": ref.kind, "num_features": len(ref.names)},
  }
  if saved_model or (saved_model is None and importlib.util.find_spec("tensorflow")):
    _write_saved_model(logits_fn, spec.input_shape, os.path.join(directory, SAVED_MODEL_DIR))
    card["export"]["saved_model"] = SAVED_MODEL_DIR
  _write_json(os.path.join(directory, CARD_FILE), card)
  _verify(directory, task, state, raw_train, batch_sizes, trainer.predict)
  card["export"]["verified_batch_sizes"] = [int(n) for n in batch_sizes]
  _write_json(os.path.join(directory, CARD_FILE), card)
  return directory


@dataclasses.dataclass(frozen=True)
class ExportedModel:
  """A reloaded export: call it on raw inputs for class probabilities.

  Attributes:
    directory: where it was loaded from.
    spec: the input spec (`input_spec.json`): input shape and dtype, preprocessing, classes.
    card: the run card (`run_card.json`).
    reference: the drift reference statistics.
  """

  directory: str
  spec: dict[str, Any]
  card: dict[str, Any]
  reference: monitor.Reference
  _logits: Any
  _embed: Any
  _preprocessing: dict[str, np.ndarray]

  @property
  def class_names(self) -> list[str]:
    return self.spec["class_names"]

  def __call__(self, inputs: np.ndarray) -> np.ndarray:
    """(N, *input_shape) raw inputs -> (N, num_classes) float32 probabilities, as `dl.predict`."""
    return np.asarray(jax.nn.softmax(self.logits(inputs)))

  def logits(self, inputs: np.ndarray) -> jax.Array:
    """(N, *input_shape) raw inputs -> (N, num_classes) logits."""
    return self._logits.call(self.preprocess(inputs))

  def embed(self, inputs: np.ndarray) -> np.ndarray:
    """(N, *input_shape) raw inputs -> (N, D) penultimate features."""
    return np.asarray(self._embed.call(self.preprocess(inputs)))

  def preprocess(self, inputs: np.ndarray) -> np.ndarray:
    """Checks raw inputs against the spec and scales them as in training."""
    check_inputs(inputs, self.spec)
    return _preprocess(self._preprocessing, np.asarray(inputs))

  def drift_features(self, inputs: np.ndarray) -> np.ndarray:
    """What the drift reference describes: raw features (tabular) or embeddings."""
    if self.reference.kind == "embeddings":
      return self.embed(inputs)
    check_inputs(inputs, self.spec)
    return np.asarray(inputs).reshape(len(inputs), -1)

  def check_drift(
    self, inputs: np.ndarray, thresholds: monitor.Thresholds | None = None
  ) -> monitor.DriftReport:
    """Compares a batch of raw inputs with the training data's reference statistics."""
    return monitor.check(self.reference, self.drift_features(inputs), thresholds)


def load(directory: str) -> ExportedModel:
  """Reloads an export; needs jax and numpy, not the model's code.

  Raises:
    FileNotFoundError: naming the missing file when `directory` is not a complete export.
  """
  paths = {
    name: os.path.join(directory, name)
    for name in (MODEL_FILE, EMBED_FILE, SPEC_FILE, PREPROCESS_FILE, REFERENCE_FILE, CARD_FILE)
  }
  missing = [name for name, path in paths.items() if not os.path.exists(path)]
  if missing:
    raise FileNotFoundError(
      f"{directory!r} is not a dl export: expected {', '.join(paths)}; missing {', '.join(missing)}."
    )
  with np.load(paths[PREPROCESS_FILE], allow_pickle=False) as f:
    preprocessing = dict(f)
  return ExportedModel(
    directory=directory,
    spec=_read_json(paths[SPEC_FILE]),
    card=_read_json(paths[CARD_FILE]),
    reference=monitor.Reference.load(paths[REFERENCE_FILE]),
    _logits=_deserialize(paths[MODEL_FILE]),
    _embed=_deserialize(paths[EMBED_FILE]),
    _preprocessing=preprocessing,
  )


def check_inputs(inputs: np.ndarray, spec: Mapping[str, Any]) -> None:
  """Raises a ValueError naming the expected shape and dtype when `inputs` do not match."""
  inputs = np.asarray(inputs)
  shape = tuple(spec["input_shape"])
  expected = f"(batch, {', '.join(map(str, shape))})"
  if inputs.ndim != len(shape) + 1 or inputs.shape[1:] != shape:
    raise ValueError(
      f"inputs for {spec['dataset']!r} must have shape {expected}; got {inputs.shape}."
    )
  if inputs.dtype != np.dtype(spec["input_dtype"]):
    raise ValueError(
      f"inputs for {spec['dataset']!r} must have dtype {spec['input_dtype']}; got {inputs.dtype}."
    )


def run_card(task, state, *, workdir: str | None = None) -> dict[str, Any]:
  """The machine-readable record of what was trained on what, and how well.

  Args:
    task: from `dl.build(config)`.
    state: the trained state.
    workdir: the run's workdir; its `metrics.jsonl` supplies metrics when present.

  Returns:
    {"config", "data" (name, splits, sizes, sha256 fingerprints of the arrays used),
    "seeds", "step", "metrics", "slice_metrics", "privacy", "versions", "created"}.
  """
  c = task.config
  metrics_path = os.path.join(workdir, "metrics.jsonl") if workdir else None
  if metrics_path and os.path.exists(metrics_path):
    run_metrics = _run_metrics(metrics_path)
  else:
    from dl import trainer

    evaluated = trainer.evaluate(state, task.model, task.eval, c.eval_batch_size)
    run_metrics = {"metrics": {"source": "dl.evaluate at export", **evaluated}}
  return {
    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "config": _jsonable(dataclasses.asdict(c)),
    "data": {
      "name": task.spec.name,
      "train_split": c.train_split,
      "eval_split": c.eval_split,
      "num_train_examples": len(task.train["label"]),
      "num_eval_examples": len(task.eval["label"]),
      "fingerprint": data_fingerprint(task.train),
      "eval_fingerprint": data_fingerprint(task.eval),
    },
    "seeds": {"seed": c.seed},
    "step": int(np.asarray(state.step)),
    "metrics": {},
    "slice_metrics": {},
    "privacy": {},
    **run_metrics,
    "versions": _versions(),
  }


def data_fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
  """sha256 over the arrays' names, dtypes, shapes and bytes, in name order."""
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
    h.update(a.tobytes())
  return "sha256:" + h.hexdigest()


def read_inputs(path: str, spec: Mapping[str, Any]) -> np.ndarray:
  """Reads a batch of raw inputs from `.npy`, `.csv` or `.png` as the spec expects.

  `.npy`: (N, *input_shape), or one example of `input_shape`. `.csv`: one example per row,
  `prod(input_shape)` numeric columns, an optional header row. `.png`: one image of
  `input_shape` (uint8 image models only).

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: unknown format, or contents whose shape or dtype do not fit `spec`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"input file {path!r} does not exist.")
  ext = os.path.splitext(path)[1].lower()
  readers = {".npy": _read_npy, ".csv": _read_csv, ".png": _read_png}
  if ext not in readers:
    raise ValueError(f"input must be one of {', '.join(readers)}; got {ext or 'no extension'!r}.")
  inputs = readers[ext](path, spec)
  check_inputs(inputs, spec)
  return inputs


def _read_npy(path: str, spec: Mapping[str, Any]) -> np.ndarray:
  x = np.load(path, allow_pickle=False)
  return x[np.newaxis] if x.shape == tuple(spec["input_shape"]) else x


def _read_csv(path: str, spec: Mapping[str, Any]) -> np.ndarray:
  shape, dtype = tuple(spec["input_shape"]), np.dtype(spec["input_dtype"])
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


def _read_png(path: str, spec: Mapping[str, Any]) -> np.ndarray:
  from PIL import Image

  shape, dtype = tuple(spec["input_shape"]), np.dtype(spec["input_dtype"])
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


def _serving_functions(model, state):
  """(logits_fn, embed_fn) of preprocessed inputs, with the params closed over (baked in)."""
  variables = {"params": state.params, **state.model_state}

  def logits_fn(x):
    return model.apply(variables, x)

  def embed_fn(x):
    dense_inputs = []

    def record_dense_inputs(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
        dense_inputs.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record_dense_inputs):
      logits = model.apply(variables, x)
    features = dense_inputs[-1] if dense_inputs else logits
    return features.reshape(features.shape[0], -1).astype(jnp.float32)

  return logits_fn, embed_fn


def _export_fn(fn, input_shape: Sequence[int], platforms: Sequence[str] | None):
  """`jax.export` of `fn` on float32 (b, *input_shape), b symbolic."""
  dims = ", ".join(["b", *map(str, input_shape)])
  x = jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims), jnp.float32)
  return jax.export.export(jax.jit(fn), platforms=platforms)(x)


def _deserialize(path: str):
  with open(path, "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


def _raw_inputs(c, split: str) -> np.ndarray:
  """The split's raw inputs, as stored in the data set."""
  from dl import data

  spec = data.info(c.dataset, data_dir=c.data_dir or None)
  return data.load(c.dataset, split, data_dir=c.data_dir or None)[spec.input_key]


def _preprocessing(raw_train: np.ndarray, normalize: bool) -> dict[str, np.ndarray]:
  """The training preprocessing as arrays (mirrors `dl.data.transforms.normalizer`)."""
  if not normalize:
    return {"kind": np.array("cast")}
  if raw_train.dtype == np.uint8:
    return {"kind": np.array("scale"), "divisor": np.array(255.0)}
  mean = raw_train.mean(axis=0, dtype=np.float64)
  std = raw_train.std(axis=0, dtype=np.float64)
  return {"kind": np.array("standardize"), "mean": mean, "std": np.where(std > 0, std, 1.0)}


def _preprocess(preprocessing: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
  """Raw inputs -> float32 model inputs, bit for bit as in training."""
  kind = str(preprocessing["kind"])
  if kind == "scale":
    return np.asarray(x, np.float32) / float(preprocessing["divisor"])
  if kind == "standardize":
    z = (np.asarray(x, np.float64) - preprocessing["mean"]) / preprocessing["std"]
    return z.astype(np.float32)
  return np.asarray(x, np.float32)


def _input_spec(spec, preprocessing: Mapping[str, np.ndarray], class_names: list[str]) -> dict:
  kind = str(preprocessing["kind"])
  how = {
    "scale": "float32(x) / 255",
    "standardize": f"float32((float64(x) - mean) / std), mean and std in {PREPROCESS_FILE}",
    "cast": "float32(x)",
  }[kind]
  return {
    "format": FORMAT,
    "dataset": spec.name,
    "input_shape": list(spec.input_shape),
    "input_dtype": np.dtype(spec.input_dtype).name,
    "preprocessing": {"kind": kind, "formula": how, "arrays": PREPROCESS_FILE},
    "num_classes": spec.num_classes,
    "class_names": class_names,
    "model_file": MODEL_FILE,
    "model_signature": "float32 (b, *input_shape) preprocessed -> float32 (b, num_classes) "
    "logits; probabilities = jax.nn.softmax(logits)",
    "embed_file": EMBED_FILE,
    "embedding": "input of the model's last Dense layer (penultimate features), float32 (b, D)",
  }


def _drift_reference(input_spec, raw_train, preprocessing, embed) -> monitor.Reference:
  """Raw features for tabular (1-D float) inputs, embeddings for images and text."""
  if len(input_spec["input_shape"]) == 1 and np.issubdtype(raw_train.dtype, np.floating):
    return monitor.reference(raw_train, kind="features")
  x = _preprocess(preprocessing, raw_train)
  embeddings = np.concatenate([np.asarray(embed(x[i : i + 1000])) for i in range(0, len(x), 1000)])
  return monitor.reference(embeddings, kind="embeddings")


def _verify(directory, task, state, raw_train, batch_sizes, predict) -> None:
  """Reloads the export and checks it against `dl.predict` at each batch size."""
  model = load(directory)
  for n in batch_sizes:
    x = np.resize(raw_train, (n, *raw_train.shape[1:]))
    got, want = model(x), predict(task, state, x)
    if not np.array_equal(got, want):
      raise RuntimeError(
        f"the reloaded export differs from dl.predict at batch size {n}: expected identical "
        f"probabilities; got max |difference| {np.abs(got - want).max():.3g}."
      )


def _class_names(c, spec) -> list[str]:
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(spec.name, data_dir=c.data_dir or os.environ.get("DL_DATA_DIR"))
    names = builder.info.features["label"].names
  except (KeyError, AttributeError, ValueError, OSError):  # A nicety: fall back to indices.
    names = None
  return list(names) if names else [str(i) for i in range(spec.num_classes)]


def _run_metrics(path: str) -> dict[str, dict[str, Any]]:
  """Card metrics from `metrics.jsonl`: last eval record, its slice metrics, privacy budget."""
  from dl import writers

  history = writers.read_history(path)
  last_eval = dict(history["eval"][-1]) if history.get("eval") else {}
  privacy = {}
  for split in sorted(history):
    for record in history[split]:
      privacy.update({k: v for k, v in record.items() if _is_privacy_key(k)})
  metrics = {k: v for k, v in last_eval.items() if not _is_privacy_key(k)}
  slices = {k: metrics.pop(k) for k in list(metrics) if "slice" in k.lower()}
  return {"metrics": metrics, "slice_metrics": slices, "privacy": privacy}


def _is_privacy_key(key: str) -> bool:
  return any(word in key.lower() for word in _PRIVACY_WORDS)


def _versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for package in _VERSIONED:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def _write_saved_model(logits_fn, input_shape: Sequence[int], path: str) -> None:
  """A TF SavedModel of preprocessed inputs -> logits, through jax2tf (needs TensorFlow)."""
  try:
    import tensorflow as tf
    from jax.experimental import jax2tf
  except ImportError as e:
    raise ImportError(
      f"saved_model=True needs TensorFlow (pip install tensorflow); got {type(e).__name__}: {e}"
    ) from e
  module = tf.Module()
  module.serve = tf.function(
    jax2tf.convert(logits_fn, polymorphic_shapes=["(b, ...)"], with_gradient=False),
    autograph=False,
    input_signature=[tf.TensorSpec((None, *input_shape), tf.float32)],
  )
  tf.saved_model.save(module, path)


def _jsonable(value):
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def _write_json(path: str, value) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)
