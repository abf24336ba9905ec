"""Speech recognition pieces: the CTC objective, greedy and beam-search decoding, WER/CER.

A CTC model (`dl.models.CTCRecognizer`) gives per-frame logits over tokens, token 0 the
blank, and how many frames are valid: `{"logits": (B, T, V), "num_frames": (B,)}`. Labels
are digit sequences padded with -1, `batch["label"]` (B, L); digit d is token d + 1.

- `ctc_objective`: `optax.ctc_loss` per example, for `dl.task(objective=...)`, trained
  through `dl.fit` like any other model.
- `greedy_decode` (jittable): the most likely token of each frame, repeats merged, blanks
  dropped. `beam_search_decode` (numpy): CTC prefix beam search, which sums the
  probabilities of all frame paths of a prefix (Hannun et al. 2014, without a language model).
- `error_rates`: word and character error rates by `jiwer`, over a corpus of transcripts.
- `transcribe`: a trained state's decoded digit sequences; `TranscriptErrorRates`: a
  `dl.fit` hook that adds WER/CER to the validation and test records (choosing checkpoints
  by `best_metric="wer"`).
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl.core.objectives import Objective
from dl.data.batches import padded_batches
from dl.data.builders.spoken_digits import DIGITS as DIGIT_WORDS
from dl.models.adapters import Model, as_model
from dl.training.protocols import Hook

BLANK = 0


def labels_to_tokens(labels_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Digits padded with -1 -> (tokens_BxL, paddings_BxL): digit d is token d + 1."""
  paddings_BxL = (labels_BxL < 0).astype(jnp.float32)
  return jnp.where(labels_BxL < 0, 0, labels_BxL + 1).astype(jnp.int32), paddings_BxL


def frame_paddings(num_frames_B: jax.Array, num_t: int) -> jax.Array:
  """(B, T) 1.0 at frames beyond each example's valid ones, 0.0 at valid frames."""
  return (jnp.arange(num_t)[None, :] >= num_frames_B[:, None]).astype(jnp.float32)


def _ctc(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]):
  """CTC negative log-likelihood per example; metrics from greedy decoding."""
  logits_BxTxV, frames_B = _check_outputs(outputs)
  if "label" not in batch or batch["label"].ndim != 2:
    got = batch["label"].shape if "label" in batch else f"keys {sorted(batch)}"
    raise ValueError(
      f"the CTC objective needs batch['label'] of shape (B, L), digits padded with -1; got {got}."
    )
  tokens_BxL, label_paddings_BxL = labels_to_tokens(batch["label"])
  logit_paddings_BxT = frame_paddings(frames_B, logits_BxTxV.shape[1])
  loss_B = optax.ctc_loss(
    logits_BxTxV.astype(jnp.float32),
    logit_paddings_BxT,
    tokens_BxL,
    label_paddings_BxL,
    blank_id=BLANK,
  )
  num_labels_B = jnp.maximum(jnp.sum(1.0 - label_paddings_BxL, 1), 1.0)
  decoded_BxT, _ = greedy_decode(logits_BxTxV, frames_B)
  exact_B = _same_sequence(decoded_BxT, jnp.where(label_paddings_BxL > 0, -1, tokens_BxL))
  return loss_B, {"loss_per_token": loss_B / num_labels_B, "string_accuracy": exact_B}


def _same_sequence(decoded_BxT: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
  """1.0 where the decoded tokens (-1 padded) equal the label tokens (-1 padded)."""
  num_t, num_l = decoded_BxT.shape[1], tokens_BxL.shape[1]
  width = max(num_t, num_l)
  a = jnp.pad(decoded_BxT, ((0, 0), (0, width - num_t)), constant_values=-1)
  b = jnp.pad(tokens_BxL, ((0, 0), (0, width - num_l)), constant_values=-1)
  return jnp.all(a == b, axis=1).astype(jnp.float32)


def _check_outputs(outputs: Any) -> tuple[jax.Array, jax.Array]:
  """(logits_BxTxV, num_frames_B) of a CTC model's outputs, or a ValueError."""
  if not isinstance(outputs, Mapping) or not {"logits", "num_frames"} <= set(outputs):
    got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
    raise ValueError(
      "a CTC model must return {'logits': (B, T, vocab), 'num_frames': (B,)} "
      f"(e.g. dl.models.CTCRecognizer); got {got}."
    )
  return outputs["logits"], outputs["num_frames"]


ctc_objective = Objective(
  _ctc,
  metrics=("loss_per_token", "string_accuracy"),
  lower_is_better=frozenset({"loss_per_token"}),
  select="loss",
)


def greedy_decode(
  logits_BxTxV: jax.Array, num_frames_B: jax.Array, blank: int = BLANK
) -> tuple[jax.Array, jax.Array]:
  """Best-path CTC decoding: each frame's most likely token, repeats merged, blanks dropped.

  Args:
    logits_BxTxV: per-frame logits (or log-probabilities).
    num_frames_B: valid frames of each example; later frames are ignored.
    blank: the blank token.

  Returns:
    (tokens_BxT, lengths_B): each example's tokens first, then -1 padding.
  """
  best_BxT = jnp.argmax(logits_BxTxV, axis=-1).astype(jnp.int32)
  num_b, num_t = best_BxT.shape
  previous_BxT = jnp.pad(best_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  valid_BxT = jnp.arange(num_t)[None, :] < num_frames_B[:, None]
  keep_BxT = valid_BxT & (best_BxT != blank) & (best_BxT != previous_BxT)
  position_BxT = jnp.where(keep_BxT, jnp.cumsum(keep_BxT, axis=1) - 1, num_t)
  rows_BxT = jnp.broadcast_to(jnp.arange(num_b)[:, None], (num_b, num_t))
  tokens_BxT = jnp.full((num_b, num_t), -1, jnp.int32)
  tokens_BxT = tokens_BxT.at[rows_BxT, position_BxT].set(best_BxT, mode="drop")
  return tokens_BxT, jnp.sum(keep_BxT, axis=1)


def beam_search_decode(
  log_probs_TxV: np.ndarray, beam_width: int = 8, blank: int = BLANK
) -> tuple[tuple[int, ...], float]:
  """CTC prefix beam search of one example: the most probable token sequence it finds.

  A prefix's probability sums every frame path that collapses to it (paths ending in a blank
  and paths ending in its last token are tracked apart, so "1 blank 1" gives "11" and "1 1"
  gives "1"). With a beam as wide as the number of prefixes it is exact.

  Args:
    log_probs_TxV: log-softmax outputs of the valid frames only.
    beam_width: prefixes kept after each frame.
    blank: the blank token.

  Returns:
    (tokens, log probability of the token sequence).
  """
  log_probs_TxV = np.asarray(log_probs_TxV, np.float64)
  beams = {(): (0.0, -np.inf)}  # prefix -> (log p of its paths ending in a blank, in a token)
  tokens = [v for v in range(log_probs_TxV.shape[1]) if v != blank]
  for lp_V in log_probs_TxV:
    grown: dict[tuple[int, ...], list[float]] = {}
    for prefix, (p_blank, p_token) in beams.items():
      _add(grown, prefix, np.logaddexp(p_blank, p_token) + lp_V[blank], -np.inf)
      for v in tokens:
        if prefix and prefix[-1] == v:
          _add(grown, prefix, -np.inf, p_token + lp_V[v])  # the same token goes on
          _add(grown, prefix + (v,), -np.inf, p_blank + lp_V[v])  # after a blank: a new one
        else:
          _add(grown, prefix + (v,), -np.inf, np.logaddexp(p_blank, p_token) + lp_V[v])
    ranked = sorted(grown.items(), key=lambda item: -np.logaddexp(*item[1]))
    beams = {prefix: (p[0], p[1]) for prefix, p in ranked[:beam_width]}
  best, (p_blank, p_token) = max(beams.items(), key=lambda item: np.logaddexp(*item[1]))
  return best, float(np.logaddexp(p_blank, p_token))


def _add(beams: dict, prefix: tuple[int, ...], blank_end: float, token_end: float) -> None:
  """Adds path probabilities (log) ending in a blank and in a token to a prefix's."""
  old = beams.setdefault(prefix, [-np.inf, -np.inf])
  old[0], old[1] = np.logaddexp(old[0], blank_end), np.logaddexp(old[1], token_end)


def tokens_to_text(tokens: Sequence[int]) -> str:
  """Digit tokens (digit d = token d + 1; -1 and blanks skipped) -> "three one four"."""
  return " ".join(DIGIT_WORDS[t - 1] for t in tokens if t > 0)


def labels_to_text(labels: Sequence[int]) -> str:
  """Digits padded with -1 -> "three one four"."""
  return " ".join(DIGIT_WORDS[d] for d in labels if d >= 0)


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
  """Corpus word and character error rates (`jiwer`), and the share of exact transcripts.

  Args:
    references: the true transcripts, words separated by spaces.
    hypotheses: the decoded ones, in the same order ("" where nothing was decoded).

  Returns:
    {"wer": word errors / reference words, "cer": character errors / reference characters,
    "string_accuracy": share of hypotheses equal to their reference}.
  """
  try:
    import jiwer  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "dl.apps.speech.error_rates uses jiwer: pip install jiwer (or pip install 'dl[speech]')."
    ) from e
  if len(references) != len(hypotheses) or not references:
    raise ValueError(
      f"error_rates needs one hypothesis per reference, at least one; got "
      f"{len(references)} references and {len(hypotheses)} hypotheses."
    )
  references, hypotheses = list(references), list(hypotheses)
  return {
    "wer": float(jiwer.wer(references, hypotheses)),
    "cer": float(jiwer.cer(references, hypotheses)),
    "string_accuracy": float(np.mean([r == h for r, h in zip(references, hypotheses)])),
  }


def transcribe(
  state: Any,
  model: Any,
  arrays: Mapping[str, np.ndarray],
  *,
  beam_width: int = 0,
  batch_size: int = 256,
) -> list[tuple[int, ...]]:
  """The token sequences a CTC model decodes from each example.

  Args:
    state: a trained state (`params`, `model_state`) of one model.
    model: `dl.models.CTCRecognizer` as `dl.Linen(..., inputs=("audio", "num_samples"))`.
    arrays: the model's inputs, (N, ...) each.
    beam_width: 0 for greedy decoding; else the beam of `beam_search_decode`.
    batch_size: examples per compiled call.

  Returns:
    One tuple of tokens per example (digit d = token d + 1).
  """
  model = as_model(model)
  run = _jitted_decoder(model)
  n = len(arrays[model.inputs[0]])
  decoded = []
  for batch in padded_batches({k: arrays[k] for k in model.inputs}, min(batch_size, n)):
    log_probs_BxTxV, frames_B, greedy_BxT = jax.device_get(
      run(state.params, state.model_state, batch)
    )
    if not beam_width:
      decoded += [tuple(int(t) for t in row if t >= 0) for row in greedy_BxT]
      continue
    for lp_TxV, frames in zip(log_probs_BxTxV, frames_B):
      decoded.append(beam_search_decode(lp_TxV[:frames], beam_width)[0])
  return decoded[:n]


@functools.cache
def _jitted_decoder(model: Model):
  """jit of model -> (log-softmax of the logits, valid frames, greedy tokens) for a batch."""

  def run(params, model_state, batch):
    outputs, _ = model.apply(params, model_state, batch, train=False)
    logits_BxTxV, frames_B = _check_outputs(outputs)
    log_probs_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    return log_probs_BxTxV, frames_B, greedy_decode(log_probs_BxTxV, frames_B)[0]

  return jax.jit(run)


class TranscriptErrorRates(Hook):
  """A `dl.fit` hook: WER, CER and string accuracy of a CTC model at each evaluation.

  Adds `error_rates` of greedy transcripts to the "eval" (validation) and "test" records of
  the splits in `data`, so `best_metric="wer"` (with `best_mode="min"`) chooses the
  checkpoint by validation WER.

  Args:
    model: the CTC model (`dl.Linen` of `dl.models.CTCRecognizer`).
    data: {split: {model inputs..., "label": (N, L) digits padded with -1}}, for "eval"
      and/or "test".
    batch_size: examples per compiled call.
  """

  def __init__(
    self, model: Any, data: Mapping[str, Mapping[str, np.ndarray]], batch_size: int = 256
  ):
    for split, arrays in data.items():
      if "label" not in arrays:
        raise ValueError(f"data[{split!r}] needs 'label' (digits padded with -1); it has none.")
    self.model = as_model(model)
    self.data = dict(data)
    self.references = {
      split: [labels_to_text(row) for row in arrays["label"]] for split, arrays in data.items()
    }
    self.batch_size = batch_size

  def on_eval(self, state: Any, step: int, split: str) -> dict[str, float]:
    """Error rates of `state` on `split`, or {} for a split without data here."""
    del step
    if split not in self.data:
      return {}
    decoded = transcribe(state, self.model, self.data[split], batch_size=self.batch_size)
    return error_rates(self.references[split], [tokens_to_text(t) for t in decoded])
