"""Tests for dl.data.text: tokenizers round-trip, padding to a fixed length in one place."""

import numpy as np
import pytest

from dl.data import text

_CORPUS = [
  "a gripping thriller with a twist",
  "the plot is thin and the acting is wooden",
  "a warm, funny and moving film",
  "dull, dull, dull: a film to forget",
  "an unexpectedly moving thriller",
] * 20


@pytest.fixture(scope="module")
def sentencepiece() -> text.SentencePieceTokenizer:
  return text.train_sentencepiece(_CORPUS, vocab_size=60)


def test_sentencepiece_round_trip_and_reserved_ids(sentencepiece):
  for snippet in ("a moving thriller", "the acting is wooden"):
    ids = sentencepiece.encode(snippet)
    assert text.PAD_ID not in ids
    assert sentencepiece.decode(ids) == snippet
  assert sentencepiece.vocab_size <= 60
  # A character never seen in training is unknown, not padding.
  assert text.UNK_ID in sentencepiece.encode("zebra")


def test_sentencepiece_is_deterministic_and_survives_serialisation(sentencepiece):
  again = text.train_sentencepiece(_CORPUS, vocab_size=60)
  assert again.model_proto == sentencepiece.model_proto
  restored = text.SentencePieceTokenizer(sentencepiece.model_proto)
  assert restored.encode("a warm film") == sentencepiece.encode("a warm film")


def test_byte_tokenizer_round_trip_with_unicode():
  tokenizer = text.ByteTokenizer()
  ids = tokenizer.encode("naïve 👍")
  assert min(ids) >= 1 and max(ids) < tokenizer.vocab_size
  assert tokenizer.decode(ids + [text.PAD_ID] * 3) == "naïve 👍"


def test_encode_padded_truncates_pads_with_zero_and_round_trips():
  tokenizer = text.ByteTokenizer()
  ids, lengths = text.encode_padded(tokenizer, ["abc", "", "abcdefgh"], length=5)
  assert ids.dtype == np.int32 and ids.shape == (3, 5)
  np.testing.assert_array_equal(lengths, [3, 0, 5])
  np.testing.assert_array_equal(ids[0], [98, 99, 100, 0, 0])
  np.testing.assert_array_equal(ids[1], 0)
  assert text.decode_padded(tokenizer, ids) == ["abc", "", "abcde"]


def test_pad_ids_refuses_the_pad_id_as_a_token_and_bad_lengths():
  with pytest.raises(ValueError, match="pad id"):
    text.pad_ids([[3, 0, 4]], 4)
  with pytest.raises(ValueError, match="length must be >= 1"):
    text.pad_ids([[3]], 0)
