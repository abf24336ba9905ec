"""The `pydoc_text` data set: Python's own reference documentation as characters, offline.

Text: every topic of `pydoc_data.topics` (the text `help("assert")` shows: the language
reference and library chapters, English prose with code), which ships with every CPython.
Topics are joined in sorted order with a blank line between them: about 465,000 characters
in Python 3.11 (the text changes a little between Python versions; the dataset's
description records the version that prepared it).

Characters map to a fixed vocabulary of `VOCAB_SIZE` = 98 ids: 0 padding (unused in the
windows), 1 unknown (the 0.1% non-ASCII characters such as curly quotes), 2 newline and
3..97 printable ASCII (space to "~").

Splits are contiguous, so no window of validation text is seen in training: the first 90%
of the characters are `train`, the last 10% `validation`. Each split is cut into
non-overlapping windows of `WINDOW` = 128 characters: "tokens" ids[s : s + 128] and
"label" ids[s + 1 : s + 129], the next character at every position.
"""

import sys
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data.builders import base

PAD_ID = 0
UNKNOWN_ID = 1
_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = 2 + len(_CHARS)
WINDOW = 128
VALIDATION_FRACTION = 0.1
_IDS = {c: i + 2 for i, c in enumerate(_CHARS)}


def encode(text: str) -> np.ndarray:
  """Characters -> ids (len(text),) int32; characters outside the vocabulary -> 1."""
  return np.fromiter((_IDS.get(c, UNKNOWN_ID) for c in text), np.int32, count=len(text))


def decode(ids) -> str:
  """Ids -> text; padding is dropped and unknown ids show as U+FFFD."""
  chars = {UNKNOWN_ID: "\ufffd", **{i: c for c, i in _IDS.items()}}
  return "".join(chars.get(int(i), "") for i in np.asarray(ids).ravel())


def corpus() -> str:
  """The whole text: every pydoc topic, sorted by name, separated by a blank line."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel

  return "\n\n".join(topics.topics[name] for name in sorted(topics.topics))


def split_ids(ids_N: np.ndarray) -> dict[str, np.ndarray]:
  """The contiguous train (first 90%) and validation (last 10%) parts of the ids."""
  num_train = int(round(len(ids_N) * (1 - VALIDATION_FRACTION)))
  return {"train": ids_N[:num_train], "validation": ids_N[num_train:]}


def windows(ids_N: np.ndarray, length: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping windows: inputs (W, length) and next-character labels (W, length)."""
  num_windows = (len(ids_N) - 1) // length
  inputs_WxL = ids_N[: num_windows * length].reshape(num_windows, length)
  labels_WxL = ids_N[1 : num_windows * length + 1].reshape(num_windows, length)
  return inputs_WxL, labels_WxL


class PydocText(base.Builder):
  """Python's pydoc topics as 128-character windows for next-character prediction."""

  DESCRIPTION = f"""
Python's reference documentation (`pydoc_data.topics`, the text of `help(topic)`) as
character ids for language modelling. Contiguous split: first 90% of the characters
train, last 10% validation; non-overlapping windows of {WINDOW} characters with the
next character as the label at each position. Vocabulary of {VOCAB_SIZE} ids: 0 pad,
1 unknown, 2 newline, 3..97 printable ASCII. Prepared with Python {sys.version.split()[0]}.
"""
  CITATION = """
@manual{python311docs,
  title = {The Python Language Reference},
  organization = {Python Software Foundation},
  year = {2023},
  note = {Distributed as pydoc\\_data/topics.py with CPython}
}
"""

  HOMEPAGE = "https://docs.python.org/3/reference/"
  SUPERVISED_KEYS = ("tokens", "label")
  DISABLE_SHUFFLING = True  # records stay in text order

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """A window of ids and the next id at each position."""
    return {
      "tokens": tfds.features.Tensor(shape=(WINDOW,), dtype=np.int32),
      "label": tfds.features.Sequence(
        tfds.features.ClassLabel(num_classes=VOCAB_SIZE), length=WINDOW
      ),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the train and validation generators; nothing is downloaded."""
    del dl_manager  # The text ships with Python.
    parts = split_ids(encode(corpus()))
    return {split: self._generate_examples(ids_N) for split, ids_N in parts.items()}

  def _generate_examples(self, ids_N: np.ndarray) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yields (window index, example) in text order."""
    inputs_WxL, labels_WxL = windows(ids_N)
    for i, (inputs_L, labels_L) in enumerate(zip(inputs_WxL, labels_WxL)):
      yield i, {"tokens": inputs_L, "label": labels_L}
