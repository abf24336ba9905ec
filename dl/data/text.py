"""Tokenisation: text -> fixed-length token ids with pad id 0, and back.

Two tokenizers share one small interface (`vocab_size`, `encode`, `decode`):

- `SentencePieceTokenizer`: a sentencepiece unigram (or BPE) model trained offline on
  training text with `train_sentencepiece` (seconds for ~10k snippets).
- `ByteTokenizer`: UTF-8 bytes shifted by one, for small demos; nothing to train.

Both reserve id 0 for padding. `encode_padded` is the one place where token lists become a
(N, L) int32 array: truncated to L, padded with 0 after the last token.
"""

import io
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

PAD_ID = 0
UNK_ID = 1
_INSTALL_SENTENCEPIECE = "pip install sentencepiece"


class Tokenizer(Protocol):
  """Text <-> token ids; id 0 (`PAD_ID`) is never produced by `encode`."""

  @property
  def vocab_size(self) -> int: ...

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes as tokens: id = byte + 1 (0 is padding), vocabulary 257."""

  @property
  def vocab_size(self) -> int:
    return 257

  def encode(self, text: str) -> list[int]:
    """The ids of `text`'s UTF-8 bytes."""
    return [b + 1 for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids`; padding (0) is dropped, broken UTF-8 becomes U+FFFD."""
    return bytes(int(i) - 1 for i in ids if int(i) != PAD_ID).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A trained sentencepiece model: id 0 is padding, 1 unknown, no BOS/EOS.

  Build it with `train_sentencepiece` or from a serialized model
  (`SentencePieceTokenizer(model_proto)`); `model_proto` gives the bytes back to store.
  """

  def __init__(self, model_proto: bytes):
    spm = _import_sentencepiece()
    self.model_proto = bytes(model_proto)
    self._processor = spm.SentencePieceProcessor(model_proto=self.model_proto)
    if self._processor.pad_id() != PAD_ID:
      raise ValueError(
        f"the sentencepiece model must reserve id {PAD_ID} for padding; its pad id is "
        f"{self._processor.pad_id()}. Train it with dl.data.text.train_sentencepiece."
      )

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """The ids of `text`'s pieces."""
    return self._processor.encode(text, out_type=int)

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids`; padding (0) is dropped."""
    return self._processor.decode([int(i) for i in ids if int(i) != PAD_ID])

  def pieces(self, text: str) -> list[str]:
    """The pieces of `text`, e.g. ["▁a", "▁gripping", "▁thrill", "er"]."""
    return self._processor.encode(text, out_type=str)


def train_sentencepiece(
  texts: Iterable[str],
  vocab_size: int,
  *,
  model_type: str = "unigram",
  character_coverage: float = 1.0,
  seed_sentencepiece_size: int = 100_000,
) -> SentencePieceTokenizer:
  """Trains a sentencepiece model in memory on `texts` (only the texts given: pass train text).

  Args:
    texts: the training sentences or snippets.
    vocab_size: pieces in the vocabulary, including padding (0) and unknown (1).
    model_type: "unigram", "bpe", "char" or "word".
    character_coverage: fraction of characters the vocabulary covers (1.0 for English).
    seed_sentencepiece_size: unigram seed pieces.

  Returns:
    The trained tokenizer.
  """
  spm = _import_sentencepiece()
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(list(texts)),
    model_writer=model,
    vocab_size=vocab_size,
    model_type=model_type,
    character_coverage=character_coverage,
    seed_sentencepiece_size=seed_sentencepiece_size,
    pad_id=PAD_ID,
    unk_id=UNK_ID,
    bos_id=-1,
    eos_id=-1,
    hard_vocab_limit=False,  # a small corpus may not support the full vocabulary
    num_threads=1,  # one thread: the same text gives the same model
    minloglevel=2,
  )
  return SentencePieceTokenizer(model.getvalue())


def encode_padded(
  tokenizer: Tokenizer, texts: Iterable[str], length: int
) -> tuple[np.ndarray, np.ndarray]:
  """Encodes texts to a fixed length: truncated to `length`, padded with 0 after the end.

  Args:
    tokenizer: any `Tokenizer`.
    texts: N strings.
    length: L, the number of ids per row.

  Returns:
    ids_NxL int32 (0 after each text's end) and lengths_N int32 (ids kept per row).
  """
  return pad_ids([tokenizer.encode(t) for t in texts], length)


def pad_ids(rows: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
  """Token lists -> (ids_NxL int32 truncated/padded with 0, lengths_N int32)."""
  if length < 1:
    raise ValueError(f"length must be >= 1; got {length}.")
  ids_NxL = np.full((len(rows), length), PAD_ID, np.int32)
  lengths_N = np.zeros((len(rows),), np.int32)
  for i, row in enumerate(rows):
    row = np.asarray(row[:length], np.int32)
    if np.any(row == PAD_ID):
      raise ValueError(
        f"row {i} holds the pad id {PAD_ID} as a token; tokenizers must not emit it."
      )
    ids_NxL[i, : len(row)] = row
    lengths_N[i] = len(row)
  return ids_NxL, lengths_N


def decode_padded(tokenizer: Tokenizer, ids_NxL: np.ndarray) -> list[str]:
  """The texts of padded rows (padding dropped)."""
  return [tokenizer.decode(row) for row in np.asarray(ids_NxL)]


def _import_sentencepiece():
  """Imports sentencepiece, or raises ImportError saying how to install it."""
  try:
    import sentencepiece  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      f"sentencepiece is not installed. Install it with: {_INSTALL_SENTENCEPIECE}"
    ) from e
  return sentencepiece
