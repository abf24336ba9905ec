"""Loads a TFDS data set split into numpy arrays, with errors that say how to fix them.

The path needs no TensorFlow: the dataset is prepared as array_record files,
read through `builder.as_data_source` and decoded once with grain into one
numpy array per feature. Local builders (`dl.data.builders`) prepare offline;
TFDS catalog names (`mnist`, `cifar10`, ...) download where a network exists.

A local name imports the one builder module that defines it (`dl.data.builders.MODULES`),
which registers it with TFDS; no other builder is imported.

Each prepared data set is checked before it is read (`dl.data.integrity`: the size and
sha256 of every file, recorded when it was prepared). A damaged local data set is prepared
again (with a warning that names its files); a damaged catalog one raises
`DamagedDatasetError` with the command that fixes it.
"""

import contextlib
import dataclasses
import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

try:
  import fcntl
except ImportError:  # Windows
  fcntl = None

import grain
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from google.protobuf import json_format

from dl.data import builders, integrity
from dl.data.errors import (
  DamagedDatasetError,
  DatasetDownloadError,
  DatasetError,
  UnknownDatasetError,
  UnknownSplitError,
)

log = logging.getLogger(__name__)

DATA_DIR_ENV = "DL_DATA_DIR"
_FILE_FORMAT = "array_record"
_LABEL_KEY = "label"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a model and a trainer need to know about a data set.

  Attributes:
    name: The TFDS name, e.g. "digits".
    input_key: The model input feature: "image" if the data set has one, else
      "features", else the first non-label tensor feature.
    input_shape: Shape of one input example, e.g. (8, 8, 1).
    input_dtype: Numpy dtype of the input, e.g. uint8.
    num_classes: The model's output size: the number of label classes, the number of
      float targets per example (regression), or the vocabulary (next-token labels).
    splits: Split name -> number of examples.
    objective: The objective the label fits (`dl.core.objectives`): "classification" for a
      ClassLabel, "regression" for a float Tensor, "next_token" for a Sequence of ClassLabel.
  """

  name: str
  input_key: str
  input_shape: tuple[int, ...]
  input_dtype: np.dtype
  num_classes: int
  splits: dict[str, int]
  objective: str = "classification"


def load(name: str, split: str, *, data_dir: str | None = None) -> dict[str, np.ndarray]:
  """Loads a whole split of a TFDS dataset into numpy arrays (decoded once).

  The data set is prepared on first use (array_record files under
  `data_dir`), then every record of the split is decoded once and each
  feature is stacked into one array. Features whose examples cannot be
  stacked (ragged or nested extras) are left out; the input and `label`
  never are. Prepared files that changed since they were prepared (a
  truncated file, say) are named in a warning and prepared again for a
  local data set; for a catalog one DamagedDatasetError says how to mend them.

  Args:
    name: A local data set (see `dl.data.LOCAL_DATASETS`) or a TFDS catalog name,
      optionally with config and version ("mnist", "mnist:3.0.1").
    split: A split name or TFDS split expression ("train", "test[:10%]").
    data_dir: Where prepared data sets live. None means `$DL_DATA_DIR` if
      set, else TFDS's default data dir.

  Returns:
    Feature name -> array with the examples along the first axis, e.g.
    {"image": uint8[N, 8, 8, 1], "label": int64[N]}.

  Raises:
    UnknownDatasetError: `name` is not a known data set.
    UnknownSplitError: the data set has no split `split`.
    DatasetDownloadError: a catalog data set could not be downloaded.
    DataPackageMissingError: a local data set's source package is missing.
    DamagedDatasetError: the prepared files of a catalog data set are damaged, or those
      of any data set cannot be read.
  """
  builder = prepared_builder(name, data_dir)
  _check_split(builder, split)
  try:
    source = builder.as_data_source(split=split)
    if not len(source):
      raise DatasetError(f"split '{split}' of dataset '{name}' is empty.")
    batch = grain.MapDataset.source(source).batch(len(source), batch_fn=stack)[0]
  except RuntimeError as e:  # array_record's error for a file damaged after the check.
    raise DamagedDatasetError(_unreadable_message(builder, name, e)) from e
  required = {_find_input_key(builder.info.features), _LABEL_KEY} - {None}
  return _keep_stackable(batch, required, name)


def info(name: str, *, data_dir: str | None = None) -> DatasetSpec:
  """Describes a data set's input, classes and splits (preparing it if needed).

  Args:
    name: A local data set (see `dl.data.LOCAL_DATASETS`) or a TFDS catalog name.
    data_dir: Where prepared data sets live. None means `$DL_DATA_DIR` if
      set, else TFDS's default data dir.

  Returns:
    The data set's `DatasetSpec`.

  Raises:
    UnknownDatasetError: `name` is not a known data set.
    DatasetDownloadError: a catalog data set could not be downloaded.
    DataPackageMissingError: a local data set's source package is missing.
    DamagedDatasetError: the prepared files of a catalog data set are damaged.
    DatasetError: the data set has no `label` feature of a kind dl trains on.
  """
  builder = prepared_builder(name, data_dir)
  features = builder.info.features
  input_key = _input_key(features)
  objective, num_classes = _label_kind(features, name)
  return DatasetSpec(
    name=builder.info.name,
    input_key=input_key,
    input_shape=tuple(features[input_key].shape),
    input_dtype=np.dtype(features[input_key].np_dtype),
    num_classes=num_classes,
    splits={s: split.num_examples for s, split in builder.info.splits.items()},
    objective=objective,
  )


def builder_info(name: str, *, data_dir: str | None = None) -> tfds.core.DatasetInfo:
  """The data set's TFDS info (features, splits and their sizes), preparing it if needed."""
  return prepared_builder(name, data_dir).info


def data_source(name: str, split: str, *, data_dir: str | None = None) -> Any:
  """A random-access source of a split's records, prepared and checked as `load` does, but
  decoding nothing until a record is read (`dl.data.streaming.Streaming` reads it)."""
  builder = prepared_builder(name, data_dir)
  _check_split(builder, split)
  return builder.as_data_source(split=split)


def class_names(name: str, feature: str, *, data_dir: str | None = None) -> tuple[str, ...]:
  """The names of a ClassLabel feature of a data set, e.g. a group attribute's groups.

  Raises:
    DatasetError: the data set has no such feature, or it is not a ClassLabel.
  """
  features = prepared_builder(name, data_dir).info.features
  if feature not in features:
    raise DatasetError(
      f"dataset '{name}' has no feature '{feature}'; its features are {sorted(features.keys())}."
    )
  if not isinstance(features[feature], tfds.features.ClassLabel):
    raise DatasetError(
      f"feature '{feature}' of dataset '{name}' must be a ClassLabel (integer ids with "
      f"names); got {type(features[feature]).__name__}."
    )
  return tuple(features[feature].names)


def _resolve_data_dir(data_dir: str | None) -> str | None:
  """Returns `data_dir`, else `$DL_DATA_DIR`, else None (TFDS's default)."""
  return data_dir or os.environ.get(DATA_DIR_ENV) or None


def prepared_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of a data set, its array_record files prepared and checked.

  Files that differ from those recorded when the data set was prepared are damaged: a
  local data set is then prepared again, a catalog one raises DamagedDatasetError.

  Args:
    name: A local data set (see `dl.data.LOCAL_DATASETS`) or a TFDS catalog name.
    data_dir: Where prepared data sets live. None means `$DL_DATA_DIR` if
      set, else TFDS's default data dir.

  Returns:
    The prepared builder (`builder.info`, `builder.as_data_source(split)`, ...).
  """
  data_dir = _resolve_data_dir(data_dir)
  with _taking_turns(data_dir, name):
    builder = _builder(name, data_dir)
    damage = integrity.damage(builder) if builder.is_prepared() else {}
    if damage:
      builder = _mend(builder, name, data_dir, damage)
    _prepare(builder, name)
    folder = epath.Path(builder.data_dir)
    if builder.is_prepared() and integrity.read_manifest(folder) is None:
      integrity.write_manifest(folder)
  return builder


@contextlib.contextmanager
def _taking_turns(data_dir: str | None, name: str):
  """Processes that check or prepare one data set in one local data dir take turns.

  The first prepares it and the others then find it prepared, instead of all preparing it at
  once (the runs of a sweep, test workers). An advisory `flock`; where there is none
  (Windows) or the data dir is remote (gs://), nothing is locked.
  """
  folder = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  if fcntl is None or "://" in folder:
    yield
    return
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f".{builders.base_name(name)}.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Returns `tfds.builder(name)`; a damaged dataset_info.json is mended like damaged data."""
  builders.import_builder(name)  # A local data set registers with TFDS when it is named.
  try:
    return tfds.builder(name, data_dir=data_dir, file_format=_FILE_FORMAT)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UnknownDatasetError(_unknown_dataset_message(name)) from e
  except json_format.ParseError as e:  # The builder reads dataset_info.json when prepared.
    _mend_info(name, data_dir, e)
    return tfds.builder(name, data_dir=data_dir, file_format=_FILE_FORMAT)


def _prepare(builder: tfds.core.DatasetBuilder, name: str) -> None:
  """Prepares the data set's array_record files unless they are there."""
  try:
    builder.download_and_prepare(file_format=_FILE_FORMAT)
  except (OSError, tfds.download.DownloadError) as e:
    if _is_local(builder.name):
      raise
    raise DatasetDownloadError(_download_failed_message(name, e)) from e


def _mend(
  builder: tfds.core.DatasetBuilder, name: str, data_dir: str | None, damage: dict[str, str]
) -> tfds.core.DatasetBuilder:
  """Deletes a damaged local data set so that it is prepared again; raises for a catalog one."""
  files = ", ".join(f"{file} ({problem})" for file, problem in sorted(damage.items()))
  folder = epath.Path(builder.data_dir)
  _report_damage(name, folder, files, local=_is_local(builder.name))
  folder.rmtree()
  return _builder(name, data_dir)


def _mend_info(name: str, data_dir: str | None, error: json_format.ParseError) -> None:
  """Deletes a local data set whose dataset_info.json is damaged; raises for a catalog one."""
  base = builders.base_name(name)
  folder = epath.Path(data_dir or tfds.core.constants.get_default_data_dir()) / base
  if not folder.exists():
    raise error
  what = f"its dataset_info.json cannot be read ({str(error).rstrip('.')})"
  _report_damage(name, folder, what, local=_is_local(base))
  folder.rmtree()


def _report_damage(name: str, folder: epath.Path, what: str, *, local: bool) -> None:
  """Logs that a local data set in `folder` is prepared again, or raises for a catalog one."""
  damaged = f"dataset '{name}' in {folder} is damaged: {what}."
  if not local:
    raise DamagedDatasetError(f"{damaged} {_fix(folder, local=False)}")
  log.warning(
    "%s It is a local data set, so dl deletes that folder and prepares it again.", damaged
  )


def _fix(folder: epath.Path | str, *, local: bool) -> str:
  """The command that mends a damaged data set in `folder`."""
  again = "" if local else " where a network is available"
  prepares = "prepares it again offline" if local else "downloads and prepares it again"
  return f"To mend it, delete that folder and run again{again}; dl {prepares}: rm -rf '{folder}'"


def _unreadable_message(builder: tfds.core.DatasetBuilder, name: str, error: Exception) -> str:
  """Says that a data set's prepared files cannot be read, and how to mend them."""
  fix = _fix(builder.data_dir, local=_is_local(builder.name))
  return (
    f"dataset '{name}' in {builder.data_dir} cannot be read ({type(error).__name__}: "
    f"{error}): its prepared files are damaged. {fix}"
  )


def _is_local(builder_name: str) -> bool:
  """Whether the builder is one of dl's offline data sets."""
  return builder_name in builders.LOCAL_DATASETS


def _unknown_dataset_message(name: str) -> str:
  """Says that `name` is unknown, suggests the closest names, lists the local ones."""
  catalog = tfds.list_builders(with_community_datasets=False)
  local = builders.LOCAL_DATASETS
  known = sorted(set(local) | set(catalog))
  base = builders.base_name(name)
  close = difflib.get_close_matches(base, known, n=3)
  suggestion = "."
  if close:
    suggestion = f"; did you mean {' or '.join(repr(c) for c in close)}?"
  return (
    f"unknown dataset '{name}'{suggestion} Local datasets (offline): {', '.join(local)}; "
    "any TFDS catalog name also works where a network is available."
  )


def _download_failed_message(name: str, error: Exception) -> str:
  """Says that a catalog data set could not be downloaded, and what to use offline."""
  return (
    f"dataset '{name}' needs a download from the internet and it failed "
    f"({type(error).__name__}: {error}). Offline? Use one of the local "
    f"datasets: {', '.join(builders.LOCAL_DATASETS)}."
  )


def _check_split(builder: tfds.core.DatasetBuilder, split: str) -> None:
  """Raises UnknownSplitError if `split` names a split the data set lacks."""
  available = list(builder.info.splits)
  if not available:  # Splits are unknown (e.g. under tfds.testing.mock_data).
    return
  for part in split.split("+"):
    base = part.split("[")[0].strip()
    if base not in available:
      raise UnknownSplitError(
        f"dataset '{builder.name}' has no split '{base}'; available splits: {', '.join(available)}."
      )


def _input_key(features: tfds.features.FeaturesDict) -> str:
  """Returns the input feature's key, or raises DatasetError if there is none."""
  key = _find_input_key(features)
  if key is None:
    raise DatasetError(
      "dataset has no input feature; expected 'image', 'features' or a "
      f"tensor feature, got {sorted(features.keys())}."
    )
  return key


def _find_input_key(features: tfds.features.FeaturesDict) -> str | None:
  """Returns "image", else "features", else the first non-label tensor feature."""
  for key in ("image", "features"):
    if key in features:
      return key
  for key, feature in features.items():
    if key != _LABEL_KEY and isinstance(feature, tfds.features.Tensor):
      return key
  return None


def _label_kind(features: tfds.features.FeaturesDict, name: str) -> tuple[str, int]:
  """The objective the `label` feature fits, and the model output size it asks for."""
  label = features[_LABEL_KEY] if _LABEL_KEY in features else None
  if isinstance(label, tfds.features.ClassLabel):
    return "classification", label.num_classes
  if isinstance(label, tfds.features.Sequence) and isinstance(
    label.feature, tfds.features.ClassLabel
  ):
    return "next_token", label.feature.num_classes
  if isinstance(label, tfds.features.Tensor) and np.issubdtype(label.np_dtype, np.floating):
    return "regression", int(np.prod(label.shape, dtype=np.int64))
  got = type(label).__name__ if label is not None else f"features {sorted(features.keys())}"
  raise DatasetError(
    f"dataset '{name}' needs a feature '{_LABEL_KEY}' that is a ClassLabel (classification), "
    f"a float Tensor (regression) or a Sequence of ClassLabel (next_token); got {got}."
  )


def stack(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray | None]:
  """Stacks each feature over examples; None for a feature that cannot be stacked."""
  return {key: _stack_feature([example[key] for example in examples]) for key in examples[0]}


def _stack_feature(values: list[Any]) -> np.ndarray | None:
  """Stacks one feature's values, or returns None if they are ragged or nested."""
  try:
    stacked = np.stack([np.asarray(value) for value in values])
  except (ValueError, TypeError):
    return None
  return None if stacked.dtype == object else stacked


def _keep_stackable(
  batch: dict[str, np.ndarray | None], required: set[str], name: str
) -> dict[str, np.ndarray]:
  """Drops unstackable features; raises if the input or label is one of them."""
  missing = sorted(k for k in required if k in batch and batch[k] is None)
  if missing:
    raise DatasetError(
      f"dataset '{name}': features {missing} differ in shape between "
      "examples, so they cannot be loaded into one array. Read it with "
      "tfds.data_source and a grain pipeline that resizes them instead."
    )
  return {key: array for key, array in batch.items() if array is not None}
