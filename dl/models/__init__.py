"""Models: Flax Linen modules, used through `init`/`apply` as pure functions.

Each takes a batch of inputs (and `train: bool` where it has dropout or batch statistics) and
returns what its docstring says: class logits (MLP, CNN, ResNet, TextRNN, the transformer
classifier, KeywordCNN), token logits (TransformerLM, DecoderLM, TransformerSeq2Seq), a
regression value (SeriesRNN, the recommenders' scores), per-pixel logits (UNet), a CenterNet
grid of heat logits and boxes, or a dict of frame logits and frame counts (CTCRecognizer).
`MODELS` names every one that `create` (and a config's `model.name`) can build.

Imports only dl.core (logical axis names for sharding).
"""

import dataclasses
import difflib

import flax.linen as nn

from dl.models import adapters
from dl.models.centernet import CenterNet
from dl.models.cnn import CNN
from dl.models.decoder import DecoderLM
from dl.models.mlp import MLP
from dl.models.recommender import MatrixFactorization, NeuMF
from dl.models.remat import POLICIES as REMAT_POLICIES
from dl.models.remat import remat
from dl.models.resnet import ResNet, ResNet8, ResNet18
from dl.models.rnn import RNNEncoder, SeriesRNN, TextRNN
from dl.models.speech import CTCRecognizer, KeywordCNN, LogMel
from dl.models.transformer import TransformerClassifier, TransformerLM, TransformerSeq2Seq
from dl.models.unet import UNet

MODELS = {
  "mlp": MLP,
  "cnn": CNN,
  "resnet": ResNet,
  "matrix_factorization": MatrixFactorization,
  "neumf": NeuMF,
  "text_rnn": TextRNN,
  "series_rnn": SeriesRNN,
  "transformer": TransformerClassifier,
  "transformer_lm": TransformerLM,
  "decoder_lm": DecoderLM,
  "transformer_seq2seq": TransformerSeq2Seq,
  "unet": UNet,
  "centernet": CenterNet,
  "keyword_cnn": KeywordCNN,
  "ctc_recognizer": CTCRecognizer,
}


def create(name: str, **kwargs) -> nn.Module:
  """Builds the model called `name` with hyperparameters `kwargs`.

  Args:
    name: a key of `MODELS`.
    **kwargs: fields of that module, e.g. `num_classes=10, width=64`.

  Returns:
    The Flax module.

  Raises:
    ValueError: for an unknown name or a keyword the module does not have.
  """
  if name not in MODELS:
    hint = difflib.get_close_matches(name, MODELS, n=1)
    did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(f"unknown model {name!r}{did_you_mean} Expected one of: {', '.join(MODELS)}.")
  cls = MODELS[name]
  fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(
      f"model {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
      f"expected some of: {', '.join(sorted(fields))}."
    )
  return cls(**kwargs)


__all__ = [
  "adapters",
  "CNN",
  "CTCRecognizer",
  "MLP",
  "MODELS",
  "CenterNet",
  "DecoderLM",
  "KeywordCNN",
  "LogMel",
  "MatrixFactorization",
  "NeuMF",
  "REMAT_POLICIES",
  "ResNet",
  "ResNet8",
  "ResNet18",
  "RNNEncoder",
  "SeriesRNN",
  "TextRNN",
  "TransformerClassifier",
  "TransformerLM",
  "TransformerSeq2Seq",
  "UNet",
  "create",
  "remat",
]
