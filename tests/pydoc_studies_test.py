"""The sequence studies in experiments/ at tiny sizes (their own test: no get_config)."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

import dl
from dl.data.builders import pydoc_text

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"


@pytest.fixture(autouse=True)
def fast_random_compile():
  """Non-partitionable threefry: compiling parameter init is much faster on CPU (same math)."""
  with jax.threefry_partitionable(False):
    yield


def _module(name):
  spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_reverse_words_pairs_and_tiny_training(tmp_path):
  study = _module("pydoc_reverse_words")
  assert study.reverse_words("is equivalent to the") == "the to equivalent is"
  arrays = study.to_arrays(["a bc def", "xy z"])
  assert pydoc_text.decode(arrays["source"][0]) == "a bc def"
  assert pydoc_text.decode(arrays["label"][0]) == "def bc a"
  assert arrays["target_in"][0, 0] == study.START_ID
  np.testing.assert_array_equal(arrays["target_in"][0, 1:9], arrays["label"][0, :8])
  assert arrays["weights"][1].sum() == len("z xy") + 1  # the characters and the end marker
  # Two-input model through dl.fit: 20 train chunks (2 held out for validation), 8 test.
  result = study.run(
    str(tmp_path), steps=2, batch_size=4, width=16, depth=1, limit=20, progress=False
  )
  assert result["train_chunks"] == 18 and result["validation_chunks"] == 2
  assert result["best_step"] in (2,) and 0.0 <= result["test_exact_match"] <= 1.0
  assert np.isfinite(result["final_train_loss"]) and 0.0 <= result["test_char_accuracy"] <= 1.0
  history = dl.read_history(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in history["eval"]] == [2] and "exact_match" in history["test"][-1]
  assert (tmp_path / "result.json").exists()


def test_unigram_baseline_is_the_cross_entropy_of_train_frequencies():
  study = _module("pydoc_char_lm")
  train = np.array([[2, 2, 3]])
  bits = study.unigram_bits_per_char(train, np.array([[2, 3]]), vocab=4)
  probs = np.array([1, 1, 3, 2]) / 7  # add-one counts
  np.testing.assert_allclose(bits, -np.mean(np.log2(probs[[2, 3]])), rtol=1e-6)
