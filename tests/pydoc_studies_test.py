"""The sequence studies in experiments/ at tiny sizes (their own test: no get_config)."""

import importlib.util
import pathlib

import numpy as np

from dl.data.builders import pydoc_text

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"


def _module(name):
  spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_reverse_words_pairs_and_tiny_training():
  study = _module("pydoc_reverse_words")
  assert study.reverse_words("is equivalent to the") == "the to equivalent is"
  arrays = study.to_arrays(["a bc def", "xy z"])
  sources_NxL, targets_in_NxL = arrays["input"][:, 0], arrays["input"][:, 1]
  assert pydoc_text.decode(sources_NxL[0]) == "a bc def"
  assert pydoc_text.decode(arrays["label"][0]) == "def bc a"
  assert targets_in_NxL[0, 0] == study.START_ID
  np.testing.assert_array_equal(targets_in_NxL[0, 1:9], arrays["label"][0, :8])
  assert arrays["weights"][1].sum() == len("z xy") + 1  # the characters and the end marker
  model = study.make_model(width=16, depth=1)
  state, last = study.train(model, arrays, steps=2, batch_size=2)
  assert int(state.step) == 2 and np.isfinite(last["loss"])
  # `evaluate` decodes with `dl.sampling.translate`, tested in tests/transformer_test.py.


def test_unigram_baseline_is_the_cross_entropy_of_train_frequencies():
  study = _module("pydoc_char_lm")
  train = np.array([[2, 2, 3]])
  bits = study.unigram_bits_per_char(train, np.array([[2, 3]]), vocab=4)
  probs = np.array([1, 1, 3, 2]) / 7  # add-one counts
  np.testing.assert_allclose(bits, -np.mean(np.log2(probs[[2, 3]])), rtol=1e-6)
