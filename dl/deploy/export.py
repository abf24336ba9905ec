"""Exported models: StableHLO that reloads with jax and numpy alone, a run card, drift references.

`export(task, state, directory)` takes any `dl.Task` (user parts from `dl.task`, or a config's
from `dl.build`) and writes:

- `model.stablehlo`: `jax.export` of the model inputs, one argument per input in
  `task.model.inputs` order, each (b, *shape) and already preprocessed (float32 features or
  int32 ids), -> the task's predictions (`task.objective.predictions` of the outputs: class
  probabilities when classifying). Params are baked in; the batch dimension `b` is symbolic
  and shared by the inputs (any batch size).
- `embed.stablehlo`: the same inputs -> (b, D) float32 features for drift checks: the input
  of the last dense layer the model calls (penultimate features): a Linen `nn.Dense` (found
  with `nn.intercept_methods`), or for a `dl.NNX` model an `nnx.Linear` (recorded by the
  module rebuilt with `nnx.merge`); for a model that calls no such layer, its outputs.
- `input_spec.json` and `preprocess.npz`: each raw input's name, shape and dtype, and its
  preprocessing (`dl.deploy.input_spec`).
- `drift_reference.npz`: reference statistics of the task's own training arrays (see Drift).
- `run_card.json`: config, fit settings and seeds, data fingerprints, validation and test
  metrics, slice metrics, privacy budget, library versions (`dl.deploy.run_card`).
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

import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dl import inference
from dl.core import objectives
from dl.data.transforms import Preprocess
from dl.deploy import input_spec, monitor, run_card
from dl.models.adapters import NNX

FORMAT = "dl.deploy.export/2"
MODEL_FILE = "model.stablehlo"
EMBED_FILE = "embed.stablehlo"
REFERENCE_FILE = "drift_reference.npz"
SAVED_MODEL_DIR = "saved_model"


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
  args = input_spec.export_args(task)
  outputs = jax.eval_shape(predict_fn, *_concrete_batch(args, 1))
  names = _class_names(task, class_names, outputs)
  os.makedirs(directory, exist_ok=True)
  for name, fn in ((MODEL_FILE, predict_fn), (EMBED_FILE, embed_fn)):
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(*args)
    with open(os.path.join(directory, name), "wb") as f:
      f.write(exported.serialize())
  input_spec.save_preprocess(os.path.join(directory, input_spec.PREPROCESS_FILE), task.preprocess)
  _write_json(os.path.join(directory, input_spec.SPEC_FILE), _spec(task, args, outputs, names))
  ref = _drift_reference(task, jax.jit(embed_fn))
  ref.save(os.path.join(directory, REFERENCE_FILE))
  card = run_card.run_card(task, state, workdir=workdir)
  card["export"] = {
    "format": FORMAT,
    "batch_dimension": "symbolic",
    "platforms": list(platforms or [jax.default_backend()]),
    "drift_reference": {"kind": ref.kind, "num_features": len(ref.names)},
  }
  if saved_model or (saved_model is None and importlib.util.find_spec("tensorflow")):
    _write_saved_model(predict_fn, args, os.path.join(directory, SAVED_MODEL_DIR))
    card["export"]["saved_model"] = SAVED_MODEL_DIR
  _write_json(os.path.join(directory, run_card.CARD_FILE), card)
  _verify(directory, task, state, batch_sizes)
  card["export"]["verified_batch_sizes"] = [int(n) for n in batch_sizes]
  _write_json(os.path.join(directory, run_card.CARD_FILE), card)
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
    self.inputs = input_spec.input_specs(spec)
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
  files = (
    MODEL_FILE,
    EMBED_FILE,
    input_spec.SPEC_FILE,
    input_spec.PREPROCESS_FILE,
    REFERENCE_FILE,
    run_card.CARD_FILE,
  )
  paths = {name: os.path.join(directory, name) for name in files}
  missing = [name for name, path in paths.items() if not os.path.exists(path)]
  if missing:
    raise FileNotFoundError(
      f"{directory!r} is not a dl export: expected {', '.join(paths)}; missing "
      f"{', '.join(missing)}."
    )
  spec = _read_json(paths[input_spec.SPEC_FILE])
  if spec.get("format") != FORMAT:
    raise ValueError(
      f"{directory!r} holds a {spec.get('format')!r} export; this dl reads {FORMAT!r}. "
      "Export the model again."
    )
  preprocess = input_spec.load_preprocess(
    paths[input_spec.PREPROCESS_FILE], list(input_spec.input_specs(spec))
  )
  return ExportedModel(
    directory,
    spec,
    _read_json(paths[run_card.CARD_FILE]),
    monitor.Reference.load(paths[REFERENCE_FILE]),
    _deserialize(paths[MODEL_FILE]),
    _deserialize(paths[EMBED_FILE]),
    preprocess,
  )


def _serving_functions(task, state):
  """(predict_fn, embed_fn) of the model inputs in order, with the params closed over."""
  model, keys = task.model, task.model.inputs
  predictions = objectives.as_objective(task.objective).predictions

  def baked():
    # The params are baked in as constants; the barrier keeps XLA from specialising the
    # program on their values (constant folding changes last bits), so the export computes
    # exactly what `dl.predict` does with params as arguments.
    return jax.lax.optimization_barrier((state.params, state.model_state))

  def predict_fn(*xs):
    out, _ = model.apply(*baked(), dict(zip(keys, xs)), train=False)
    return predictions(out)

  def embed_fn(*xs):
    features = _penultimate(model, *baked(), dict(zip(keys, xs)))
    return jnp.reshape(features, (features.shape[0], -1)).astype(jnp.float32)

  return predict_fn, embed_fn


def _penultimate(model, params, model_state, batch) -> jax.Array:
  """The input of the model's last dense layer call (Linen `nn.Dense`, NNX `nnx.Linear`) in
  eval mode, or its outputs when it calls none."""
  if isinstance(model, NNX):
    return _nnx_penultimate(model, params, model_state, batch)
  dense_inputs = []

  def record_dense_inputs(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      dense_inputs.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record_dense_inputs):
    out, _ = model.apply(params, model_state, batch, train=False)
  return dense_inputs[-1] if dense_inputs else out


def _nnx_penultimate(model: NNX, params, model_state, batch) -> jax.Array:
  """`_penultimate` of a `dl.NNX` model: its module rebuilt (`nnx.merge`) with each
  `nnx.Linear` layer's class swapped for a subclass that records the layer's input."""
  from flax import nnx

  module = model.module(params, model_state)  # a fresh module, only this call sees it
  module.eval()
  linear_inputs, recording = [], {}
  for _, layer in nnx.iter_modules(module):
    if isinstance(layer, nnx.Linear):
      cls = type(layer)
      layer.__class__ = recording.setdefault(cls, _recording_subclass(cls, linear_inputs))
  out = module(*(batch[k] for k in model.inputs))
  return linear_inputs[-1] if linear_inputs else out


def _recording_subclass(cls: type, inputs: list) -> type:
  """A subclass of layer class `cls` whose calls append their first argument to `inputs`."""

  def __call__(self, x, *args, **kwargs):
    inputs.append(x)
    return super(subclass, self).__call__(x, *args, **kwargs)

  subclass = type(f"Recording{cls.__name__}", (cls,), {"__call__": __call__})
  return subclass


def _concrete_batch(args, n: int) -> list[jax.ShapeDtypeStruct]:
  """`args` with batch size n for the symbolic b."""
  return [jax.ShapeDtypeStruct((n, *a.shape[1:]), a.dtype) for a in args]


def _class_names(task, class_names: Sequence[str] | None, outputs) -> list[str]:
  """One name per output column (`task.class_names` by default), or none."""
  names = list(task.class_names if class_names is None else class_names)
  if names and (outputs.ndim != 2 or outputs.shape[1] != len(names)):
    raise ValueError(
      f"expected one class name per output column; the model's predictions are "
      f"{outputs.shape[1:]} per example and there are {len(names)} names: {names}."
    )
  return names


def _spec(task, args, outputs, class_names: list[str]) -> dict[str, Any]:
  """The contents of `input_spec.json`: the inputs, the outputs and the exported files."""
  return {
    "format": FORMAT,
    "name": task.name,
    "inputs": input_spec.describe_inputs(task, args),
    "outputs": {"shape": list(outputs.shape[1:]), "dtype": np.dtype(outputs.dtype).name},
    "class_names": class_names,
    "model_file": MODEL_FILE,
    "model_signature": "the inputs' model arrays, in order, each model_dtype (b, *shape) -> "
    "predictions (b, *outputs.shape): class probabilities when class_names are given",
    "embed_file": EMBED_FILE,
    "embedding": "the same inputs -> float32 (b, D): the input of the last dense layer the "
    "model calls (Linen Dense, NNX Linear), or the model's outputs when it calls none",
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


def _write_json(path: str, value) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)
