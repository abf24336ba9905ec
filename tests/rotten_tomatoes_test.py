"""Tests for the `rotten_tomatoes` builder: splits, tokens trained on train text only."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import dl.data
from dl.data import text
from dl.data.builders import rotten_tomatoes


def test_split_indices_are_disjoint_cover_all_and_are_pinned():
  splits = rotten_tomatoes.split_indices(12_752)
  sizes = {name: len(indices) for name, indices in splits.items()}
  assert sizes == {"train": 10_200, "validation": 1_276, "test": 1_276}
  everything = np.concatenate(list(splits.values()))
  assert len(np.unique(everything)) == 12_752
  # Golden values: a change here silently changes the published split.
  assert splits["test"][:3].tolist() == [1, 37, 38]


def test_mock_data_loads_token_ids():
  with tfds.testing.mock_data(num_examples=4):
    arrays = dl.data.load("rotten_tomatoes", "train")
  assert arrays["tokens"].shape == (4, 64)
  assert arrays["tokens"].dtype == np.int32


@pytest.fixture(scope="module")
def prepared(data_dir: str) -> tfds.core.DatasetBuilder:
  """The real data set, prepared once in the session's data dir (the experiments reuse it)."""
  return dl.data.loading.prepared_builder("rotten_tomatoes", data_dir=data_dir)


def test_tokenizer_is_trained_on_the_train_snippets_only(prepared):
  _, snippets, _ = rotten_tomatoes.read_snippets("rotten_tomatoes")
  train = rotten_tomatoes.split_indices(len(snippets))["train"]
  expected = text.train_sentencepiece([snippets[i] for i in train], vocab_size=8000)
  assert rotten_tomatoes.tokenizer(prepared).model_proto == expected.model_proto


def test_splits_hold_distinct_snippets_whose_tokens_decode_to_the_text(prepared):
  tokenizer = rotten_tomatoes.tokenizer(prepared)
  texts = {}
  for split in ("train", "validation", "test"):
    arrays = dl.data.load("rotten_tomatoes", split, data_dir=prepared.data_dir.split("/rotten")[0])
    assert set(np.unique(arrays["label"])) == {0, 1}
    texts[split] = {t.decode() for t in arrays["text"]}
    assert len(texts[split]) == len(arrays["text"])
    short = (arrays["tokens"] != text.PAD_ID).sum(axis=1) < 64  # not truncated
    decoded = text.decode_padded(tokenizer, arrays["tokens"][short][:200])
    original = [" ".join(t.decode().split()) for t in arrays["text"][short][:200]]
    # Sentencepiece normalises (NFKC) and maps characters unseen in train to unknown.
    assert np.mean([a == b for a, b in zip(decoded, original, strict=True)]) > 0.9
  assert not texts["train"] & texts["test"]
  assert not texts["train"] & texts["validation"]
  assert not texts["validation"] & texts["test"]
