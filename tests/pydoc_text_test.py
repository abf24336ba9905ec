import numpy as np

import dl.data
from dl.data.builders import pydoc_text


def test_encode_decode_round_trip_and_unknowns():
  text = 'def f(x):\n  return "~"  # ok'
  ids = pydoc_text.encode(text)
  assert ids.dtype == np.int32 and ids.min() >= 2 and ids.max() < pydoc_text.VOCAB_SIZE
  assert pydoc_text.decode(ids) == text
  np.testing.assert_array_equal(pydoc_text.encode("a\u2019b\t"), [68, 1, 69, 1])
  assert pydoc_text.decode([0, 68, 1]) == "a\ufffd"


def test_corpus_is_mostly_in_vocabulary():
  ids = pydoc_text.encode(pydoc_text.corpus())
  assert len(ids) > 300_000
  assert np.mean(ids == pydoc_text.UNKNOWN_ID) < 0.005


def test_windows_are_contiguous_and_labels_shifted():
  ids_N = np.arange(20, dtype=np.int32)
  parts = pydoc_text.split_ids(ids_N)
  np.testing.assert_array_equal(np.concatenate([parts["train"], parts["validation"]]), ids_N)
  assert len(parts["validation"]) == 2
  inputs_WxL, labels_WxL = pydoc_text.windows(parts["train"], length=4)
  assert inputs_WxL.shape == labels_WxL.shape == (4, 4)
  np.testing.assert_array_equal(inputs_WxL.ravel(), np.arange(16))
  np.testing.assert_array_equal(labels_WxL.ravel(), np.arange(1, 17))


def test_prepared_splits_follow_the_text(data_dir):
  train = dl.data.load("pydoc_text", "train", data_dir=data_dir)
  validation = dl.data.load("pydoc_text", "validation", data_dir=data_dir)
  assert train["tokens"].shape[1:] == train["label"].shape[1:] == (pydoc_text.WINDOW,)
  np.testing.assert_array_equal(train["tokens"][:, 1:], train["label"][:, :-1])
  np.testing.assert_array_equal(train["tokens"][1:, 0], train["label"][:-1, -1])
  text = pydoc_text.corpus()
  assert pydoc_text.decode(train["tokens"][0]) == text[: pydoc_text.WINDOW]
  assert 0.08 < len(validation["tokens"]) / len(train["tokens"]) < 0.12
  start = len(pydoc_text.split_ids(np.zeros(len(text)))["train"])
  assert pydoc_text.decode(validation["tokens"][0]) == text[start : start + pydoc_text.WINDOW]
