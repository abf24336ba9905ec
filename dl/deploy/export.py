"""Exported models: StableHLO that reloads with jax and numpy alone, a run card, drift references.

`export(task, state, directory)` takes any `dl.Task` (user parts from `dl.task`, or a config's
from `dl.build`) and writes:

- `model.stablehlo`: `jax.export` of the model inputs, one argument per input in
  `task.model.inputs` order, each (b, *shape) and already preprocessed (float32 features or
  int32 ids), -> the task's predictions (`task.objective.predictions` of the outputs: class
  probabilities when classifying). Params are baked in; the batch dimension `b` is symbolic
  and shared by the inputs (any batch size).
- `embed.stablehlo`: the same inputs -> (b, D) float32 features for drift checks: the input
  of the model's last Linen `Dense` layer (penultimate features, found with
  `nn.intercept_methods`); for a model with no Linen `Dense` layer (e.g. a `dl.NNX` model)
  its outputs.
- `input_spec.json` and `preprocess.npz`: each raw input's name, shape and dtype, and its
  preprocessing: the very `Preprocess` values training used (`task.preprocess`), saved with
  `Preprocess.to_arrays` under "<input>/<array>" and applied in numpy exactly as `dl.predict`
  applies them.
- `drift_reference.npz`: reference statistics of the task's own training arrays (see Drift).
- `run_card.json`: config, fit settings and seeds, data fingerprints, validation and test
  metrics, slice metrics, privacy budget, library versions.
- `saved_model/`: a TF SavedModel (jax2tf), only when TensorFlow is installed.

Reloading needs no model code (`jax.export.deserialize(...).call(*inputs)`); `load` wraps
that with input checks, preprocessing and drift checks.

Drift. Tabular models (every input a vector of floats) are monitored feature by feature on
their model inputs: the reference holds quantile bins and a sample of the preprocessed
training features, and an incoming raw batch is preprocessed the same way before it is
compared, so no raw training data is kept or reloaded. Standardisation is an increasing
affine map per feature, under which a feature's quantile bins (hence its PSI) and its KS
statistic are the same as on raw values (up to float32 rounding of near-ties), so the
verdicts read as on raw features. Every other model (images, ids, sequences) is monitored on
its embeddings (`embed.stablehlo`), whole vectors (MMD) and dimension by dimension.
"""

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

from dl import inference
from dl.core import objectives
from dl.data.transforms import Preprocess
from dl.deploy import monitor

FORMAT = "dl.deploy.export/2"
MODEL_FILE = "model.stablehlo"
EMBED_FILE = "embed.stablehlo"
SPEC_FILE = "input_spec.json"
PREPROCESS_FILE = "preprocess.npz"
REFERENCE_FILE = "drift_reference.npz"
CARD_FILE = "run_card.json"
SAVED_MODEL_DIR = "saved_model"
_VERSIONED = ("dl", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy")
_PRIVACY_WORDS = ("epsilon", "delta", "noise_multiplier", "privacy")
# The gaps between groups that `fairness.SliceMetrics` adds beside its "<metric>/group=<g>" keys.
_GAP_METRICS = ("demographic_parity_difference", "equalized_odds_difference")


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
    task: a `dl.Task` (`dl.task(...)` or `dl.build(config)`): its model, raw inputs
      (`task.inputs`), preprocessing, objective's predictions, class names and training
      arrays (the drift reference) are what the export holds.
    state: one trained model's state, e.g. from `dl.fit`, `dl.train` or `dl.restore`.
    directory: where the artifact goes (created; existing files are overwritten).
    batch_sizes: the export has a symbolic batch dimension; it is reloaded and checked to
      give `dl.predict`'s predictions exactly at each of these batch sizes.
    workdir: the run's workdir: its `fit_config.json` (seeds, steps) and `metrics.jsonl`
      (last validation record, test record, slice metrics, privacy budget) go into the card.
      Without it, the card holds `dl.evaluate` on the task's validation and test arrays.
    class_names: one name per class (default `task.class_names`; empty for outputs that are
      not class scores).
    platforms: `jax.export` lowering platforms, e.g. ("cpu", "cuda") (default: this
      backend, which the list must include for the check against `dl.predict`).
    saved_model: also write a TF SavedModel: None when TensorFlow is installed, True
      always (ImportError without TensorFlow), False never.

  Returns:
    `directory`.

  Raises:
    ValueError: for an ensemble, or class names that do not match the model's outputs.
    RuntimeError: if the reloaded export does not reproduce `dl.predict`.
  """
  if not hasattr(task.train, "arrays"):
    raise ValueError(
      "export computes its drift reference and checks from the training arrays in memory; "
      f"this task's training data is a data part ({type(task.train).__name__}) without them."
    )
  if inference.is_ensemble(state):
    raise ValueError(
      f"export takes one model; got an ensemble of {np.shape(state.step)[0]} members. Export "
      "one member (jax.tree.map(lambda x: x[i], state)) or train a single model."
    )
  if saved_model and not importlib.util.find_spec("tensorflow"):
    raise ImportError("saved_model=True needs TensorFlow (pip install tensorflow); not installed.")
  predict_fn, embed_fn = _serving_functions(task, state)
  args = _export_args(task)
  outputs = jax.eval_shape(predict_fn, *_concrete_batch(args, 1))
  names = _class_names(task, class_names, outputs)
  os.makedirs(directory, exist_ok=True)
  for name, fn in ((MODEL_FILE, predict_fn), (EMBED_FILE, embed_fn)):
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(*args)
    with open(os.path.join(directory, name), "wb") as f:
      f.write(exported.serialize())
  arrays = {f"{k}/{a}": v for k, p in task.preprocess.items() for a, v in p.to_arrays().items()}
  np.savez(os.path.join(directory, PREPROCESS_FILE), **arrays)
  _write_json(os.path.join(directory, SPEC_FILE), _input_spec(task, args, outputs, names))
  ref = _drift_reference(task, jax.jit(embed_fn))
  ref.save(os.path.join(directory, REFERENCE_FILE))
  card = run_card(task, state, workdir=workdir)
  card["export"] = {
    "format": FORMAT,
    "batch_dimension": "symbolic",
    "platforms": list(platforms or [jax.default_backend()]),
    "drift_reference": {"kind": ref.kind, "num_features": len(ref.names)},
  }
  if saved_model or (saved_model is None and importlib.util.find_spec("tensorflow")):
    _write_saved_model(predict_fn, args, os.path.join(directory, SAVED_MODEL_DIR))
    card["export"]["saved_model"] = SAVED_MODEL_DIR
  _write_json(os.path.join(directory, CARD_FILE), card)
  _verify(directory, task, state, batch_sizes)
  card["export"]["verified_batch_sizes"] = [int(n) for n in batch_sizes]
  _write_json(os.path.join(directory, CARD_FILE), card)
  return directory


class ExportedModel:
  """A reloaded export: call it on raw inputs for the model's predictions.

  It has what `dl.inference.prepare_inputs` reads of a task (`inputs`, `preprocess`), so
  inputs are checked and preprocessed by the same code as in `dl.predict`.

  Attributes:
    directory: where it was loaded from.
    spec: the input spec (`input_spec.json`): inputs, preprocessing, outputs, classes.
    card: the run card (`run_card.json`).
    reference: the drift reference statistics.
    inputs: {name: (example shape, raw dtype)} in the order the exported function takes them.
    preprocess: {name: `Preprocess`} of the inputs that have one.
  """

  def __init__(
    self,
    directory: str,
    spec: dict,
    card: dict,
    reference: monitor.Reference,
    predict,
    embed,
    preprocess: dict[str, Preprocess],
  ):
    self.directory, self.spec, self.card, self.reference = directory, spec, card, reference
    self._predict, self._embed = predict, embed
    self.inputs = input_specs(spec)
    self.preprocess = preprocess
    self._model_dtypes = [np.dtype(i["model_dtype"]) for i in spec["inputs"]]

  @property
  def class_names(self) -> list[str]:
    """One name per class; empty when the outputs are not class scores."""
    return self.spec["class_names"]

  def __call__(self, inputs: Any) -> np.ndarray:
    """Raw inputs ((N, ...) for one input, {name: (N, ...)} for several) -> (N, ...)
    predictions, e.g. (N, num_classes) float32 probabilities, exactly as `dl.predict`."""
    return np.asarray(self._predict.call(*self.model_inputs(inputs)))

  def embed(self, inputs: Any) -> np.ndarray:
    """Raw inputs -> (N, D) embeddings (see `embed.stablehlo`)."""
    return np.asarray(self._embed.call(*self.model_inputs(inputs)))

  def model_inputs(self, inputs: Any) -> list[np.ndarray]:
    """Checks raw inputs against the spec and preprocesses them as in training: the
    exported function's arguments, in order."""
    prepared = inference.prepare_inputs(self, inputs)
    return [np.asarray(prepared[k], d) for k, d in zip(self.inputs, self._model_dtypes)]

  def drift_features(self, inputs: Any) -> np.ndarray:
    """What the drift reference describes: (N, F) model inputs of tabular models, else
    (N, D) embeddings."""
    if self.reference.kind == "embeddings":
      return self.embed(inputs)
    return np.concatenate([x.reshape(len(x), -1) for x in self.model_inputs(inputs)], axis=1)

  def check_drift(
    self, inputs: Any, thresholds: monitor.Thresholds | None = None
  ) -> monitor.DriftReport:
    """Compares a batch of raw inputs with the training data's reference statistics."""
    return monitor.check(self.reference, self.drift_features(inputs), thresholds)


def load(directory: str) -> ExportedModel:
  """Reloads an export; needs jax and numpy, not the model's code.

  Raises:
    FileNotFoundError: naming the missing file when `directory` is not a complete export.
    ValueError: for an export in another format (an older dl's).
  """
  paths = {
    name: os.path.join(directory, name)
    for name in (MODEL_FILE, EMBED_FILE, SPEC_FILE, PREPROCESS_FILE, REFERENCE_FILE, CARD_FILE)
  }
  missing = [name for name, path in paths.items() if not os.path.exists(path)]
  if missing:
    raise FileNotFoundError(
      f"{directory!r} is not a dl export: expected {', '.join(paths)}; missing "
      f"{', '.join(missing)}."
    )
  spec = _read_json(paths[SPEC_FILE])
  if spec.get("format") != FORMAT:
    raise ValueError(
      f"{directory!r} holds a {spec.get('format')!r} export; this dl reads {FORMAT!r}. "
      "Export the model again."
    )
  with np.load(paths[PREPROCESS_FILE], allow_pickle=False) as f:
    stored = dict(f)
  preprocess = {}
  for name in input_specs(spec):
    arrays = {k.split("/", 1)[1]: v for k, v in stored.items() if k.split("/", 1)[0] == name}
    if arrays:
      preprocess[name] = Preprocess.from_arrays(arrays)
  return ExportedModel(
    directory,
    spec,
    _read_json(paths[CARD_FILE]),
    monitor.Reference.load(paths[REFERENCE_FILE]),
    _deserialize(paths[MODEL_FILE]),
    _deserialize(paths[EMBED_FILE]),
    preprocess,
  )


def input_specs(spec: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{name: (example shape, raw dtype)} of an `input_spec.json`, in the model's order."""
  return {i["name"]: (tuple(i["shape"]), np.dtype(i["dtype"])) for i in spec["inputs"]}


def run_card(task, state, *, workdir: str | None = None) -> dict[str, Any]:
  """The machine-readable record of what was trained on what, and how well.

  Args:
    task: a `dl.Task`; its `config` (the config's fields; {} for user parts) is recorded.
    state: the trained state.
    workdir: the run's workdir: `fit_config.json` (written by `dl.fit`: seed, steps, batch
      size...) and `metrics.jsonl` supply the fit settings and the metrics when present.

  Returns:
    {"created", "name", "config", "fit_config", "data" (sizes and sha256 fingerprints of
    the model-ready arrays), "seeds", "step", "metrics" ({"validation": last "eval" record,
    "test": the "test" record}), "slice_metrics" (the same, per-group keys and gaps from
    `dl.trust.fairness.SliceMetrics`), "privacy" (budget spent and DP-SGD settings), "versions"}.
  """
  config = dict(task.config)
  fit_config = {}
  if workdir and os.path.exists(os.path.join(workdir, "fit_config.json")):
    fit_config = _read_json(os.path.join(workdir, "fit_config.json"))
  metrics_path = os.path.join(workdir, "metrics.jsonl") if workdir else ""
  if metrics_path and os.path.exists(metrics_path):
    metrics = _run_metrics(metrics_path)
  else:
    metrics = _evaluated_metrics(task, state, fit_config.get("eval_batch_size", 1000))
  seed = fit_config.get("seed", config.get("fit", {}).get("seed"))
  return {
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "name": task.name,
    "config": _jsonable(config),
    "fit_config": _jsonable(fit_config),
    "data": _data_card(task, config),
    "seeds": {} if seed is None else {"seed": seed},
    "step": int(np.asarray(state.step)),
    **metrics,
    "privacy": {**metrics["privacy"], **_privacy_settings(config)},
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


def _serving_functions(task, state):
  """(predict_fn, embed_fn) of the model inputs in order, with the params closed over."""
  model, keys = task.model, task.model.inputs
  predictions = objectives.as_objective(task.objective).predictions

  def outputs(*xs):
    # The params are baked in as constants; the barrier keeps XLA from specialising the
    # program on their values (constant folding changes last bits), so the export computes
    # exactly what `dl.predict` does with params as arguments.
    params, model_state = jax.lax.optimization_barrier((state.params, state.model_state))
    out, _ = model.apply(params, model_state, dict(zip(keys, xs)), train=False)
    return out

  def predict_fn(*xs):
    return predictions(outputs(*xs))

  def embed_fn(*xs):
    dense_inputs = []

    def record_dense_inputs(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
        dense_inputs.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record_dense_inputs):  # Linen only; NNX models fall through.
      out = outputs(*xs)
    features = dense_inputs[-1] if dense_inputs else out
    return jnp.reshape(features, (features.shape[0], -1)).astype(jnp.float32)

  return predict_fn, embed_fn


def _model_dtype(task, key: str) -> np.dtype:
  """The dtype the model sees for input `key` (e.g. float32, int32), as jit canonicalises it."""
  return np.dtype(jax.dtypes.canonicalize_dtype(task.train.example()[key].dtype))


def _export_args(task) -> list[jax.ShapeDtypeStruct]:
  """The exported function's arguments: each model input as (b, *shape), one symbolic b."""
  (b,) = jax.export.symbolic_shape("b")
  return [
    jax.ShapeDtypeStruct((b, *task.train.example()[k].shape[1:]), _model_dtype(task, k))
    for k in task.model.inputs
  ]


def _concrete_batch(args, n: int) -> list[jax.ShapeDtypeStruct]:
  return [jax.ShapeDtypeStruct((n, *a.shape[1:]), a.dtype) for a in args]


def _class_names(task, class_names: Sequence[str] | None, outputs) -> list[str]:
  names = list(task.class_names if class_names is None else class_names)
  if names and (outputs.ndim != 2 or outputs.shape[1] != len(names)):
    raise ValueError(
      f"expected one class name per output column; the model's predictions are "
      f"{outputs.shape[1:]} per example and there are {len(names)} names: {names}."
    )
  return names


def _input_spec(task, args, outputs, class_names: list[str]) -> dict[str, Any]:
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
  return {
    "format": FORMAT,
    "name": task.name,
    "inputs": inputs,
    "outputs": {"shape": list(outputs.shape[1:]), "dtype": np.dtype(outputs.dtype).name},
    "class_names": class_names,
    "model_file": MODEL_FILE,
    "model_signature": "the inputs' model arrays, in order, each model_dtype (b, *shape) -> "
    "predictions (b, *outputs.shape): class probabilities when class_names are given",
    "embed_file": EMBED_FILE,
    "embedding": "the same inputs -> float32 (b, D): the input of the model's last Linen Dense "
    "layer, or the model's outputs when it has none (e.g. NNX models)",
  }


def _drift_reference(task, embed) -> monitor.Reference:
  """Per-feature model inputs of tabular models, embeddings of every other (see the module
  docstring); from the task's training arrays."""
  keys = task.model.inputs
  arrays = [task.train.arrays[k] for k in keys]
  tabular = all(
    len(shape) == 1 and np.issubdtype(dtype, np.floating) for shape, dtype in task.inputs.values()
  )
  if tabular:
    names = [
      f"feature_{i}" if len(keys) == 1 else f"{k}_{i}"
      for k, a in zip(keys, arrays)
      for i in range(a.shape[1])
    ]
    return monitor.reference(np.concatenate(arrays, axis=1), kind="features", names=names)
  chunks = [embed(*(a[i : i + 1000] for a in arrays)) for i in range(0, len(arrays[0]), 1000)]
  return monitor.reference(np.concatenate([np.asarray(c) for c in chunks]), kind="embeddings")


def _verification_inputs(task, n: int) -> dict[str, np.ndarray]:
  """n raw inputs to check the export with, made without reloading raw data: the training
  arrays' values in each input's raw dtype (ids as they are; standardised floats are valid
  raw floats too), and uint8 pixels at random."""
  rng = np.random.default_rng(0)
  index = np.arange(n) % len(task.train)
  out = {}
  for key, (shape, dtype) in task.inputs.items():
    if np.dtype(dtype) == np.uint8:
      out[key] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    else:
      out[key] = np.asarray(task.train.arrays[key][index]).astype(dtype)
  return out


def _verify(directory: str, task, state, batch_sizes: Sequence[int]) -> None:
  """Reloads the export and checks it against `dl.predict` at each batch size."""
  model = load(directory)
  for n in batch_sizes:
    inputs = _verification_inputs(task, n)
    got, want = model(inputs), inference.predict(task, state, inputs)
    if got.shape != want.shape or not np.array_equal(got, want):
      raise RuntimeError(
        f"the reloaded export differs from dl.predict at batch size {n}: expected identical "
        f"predictions {want.shape}; got {got.shape}, max |difference| "
        f"{np.abs(got.astype(np.float64) - want).max() if got.shape == want.shape else 'n/a'}."
      )


def _data_card(task, config: Mapping[str, Any]) -> dict[str, Any]:
  """Sizes and fingerprints of the model-ready (preprocessed) arrays of each split."""
  card = {
    k: config[k]
    for k in ("dataset", "train_split", "validation_split", "test_split")
    if k in config
  }
  card |= {
    "num_train_examples": len(task.train),
    "fingerprint": data_fingerprint(task.train.arrays),
  }
  for split, arrays in (("validation", task.eval), ("test", task.test)):
    if arrays is not None:
      card[f"num_{split}_examples"] = inference.num_examples(arrays)
    if isinstance(arrays, Mapping):  # a split read in batches has no fingerprint
      card[f"{split}_fingerprint"] = data_fingerprint(arrays)
  return card


def _evaluated_metrics(task, state, batch_size: int) -> dict[str, dict[str, Any]]:
  """Card metrics without a workdir: `dl.evaluate` on the validation and test arrays."""
  metrics = {"source": "dl.evaluate at export"}
  for split, name in (("eval", "validation"), ("test", "test")):
    evaluated = task.evaluate(state, split, batch_size)
    if evaluated is not None:
      metrics[name] = evaluated
  return {"metrics": metrics, "slice_metrics": {}, "privacy": {}}


def _run_metrics(path: str) -> dict[str, dict[str, Any]]:
  """Card metrics from `metrics.jsonl`: the last validation record and the test record,
  each split into overall and slice metrics; the privacy budget spent."""
  from dl.core import writers

  history = writers.read_history(path)
  metrics, slices, privacy = {"source": "metrics.jsonl"}, {}, {}
  for split in sorted(history):
    for record in history[split]:
      privacy.update({k: v for k, v in record.items() if _is_privacy_key(k)})
  for split, name in (("eval", "validation"), ("test", "test")):
    if not history.get(split):
      continue
    record = {k: v for k, v in history[split][-1].items() if not _is_privacy_key(k)}
    sliced = {k: record.pop(k) for k in list(record) if _is_slice_key(k)}
    metrics[name] = record
    if sliced:
      slices[name] = {"step": record["step"], **sliced}
  return {"metrics": metrics, "slice_metrics": slices, "privacy": privacy}


def _is_slice_key(key: str) -> bool:
  return "/group=" in key or key in _GAP_METRICS


def _is_privacy_key(key: str) -> bool:
  return any(word in key.lower() for word in _PRIVACY_WORDS)


def _privacy_settings(config: Mapping[str, Any]) -> dict[str, Any]:
  """DP-SGD's settings from a config that trained with it (noise multiplier > 0)."""
  if not config.get("dp_noise_multiplier"):
    return {}
  return {
    "noise_multiplier": config["dp_noise_multiplier"],
    "l2_clip": config.get("dp_l2_clip"),
    "delta": config.get("dp_delta"),
  }


def _versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for package in _VERSIONED:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def _write_saved_model(predict_fn, args, path: str) -> None:
  """A TF SavedModel of model inputs -> predictions, through jax2tf (needs TensorFlow)."""
  try:
    import tensorflow as tf
    from jax.experimental import jax2tf
  except ImportError as e:
    raise ImportError(
      f"saved_model=True needs TensorFlow (pip install tensorflow); got {type(e).__name__}: {e}"
    ) from e
  module = tf.Module()
  module.serve = tf.function(
    jax2tf.convert(predict_fn, polymorphic_shapes=["(b, ...)"] * len(args), with_gradient=False),
    autograph=False,
    input_signature=[tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in args],
  )
  tf.saved_model.save(module, path)


def _deserialize(path: str):
  with open(path, "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


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
