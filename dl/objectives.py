"""What a model is trained to do: the loss and metrics of each example of a batch.

An objective maps `(outputs, batch) -> (loss_B, metrics)` with per-example values: `loss_B`
is (B,) and `metrics` is {name: (B,)}. `dl.train_step` averages them over the batch;
`dl.eval_step` sums them, weighted by the batch's "mask", so that evaluation is exact over
padded batches. Any callable with that contract can be passed to the steps, e.g. a detection
loss in a study script.
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Objective = Callable[[jax.Array, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def cross_entropy(
  logits_BxC: jax.Array, labels_B: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels, optionally smoothed."""
  if label_smoothing == 0.0:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
  targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BxC.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits_BxC, targets_BxC)


def classification(
  logits_BxC: jax.Array, batch: dict[str, jax.Array], *, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Softmax cross-entropy against `batch["label"]` (B,) integer class ids.

  Returns:
    (B,) losses and {"accuracy": (B,) 0/1}.
  """
  labels_B = batch["label"]
  if labels_B.ndim != 1 or not jnp.issubdtype(labels_B.dtype, jnp.integer):
    raise ValueError(
      f"objective 'classification' needs batch['label'] of shape (B,) holding integer class "
      f"ids; got shape {labels_B.shape} and dtype {labels_B.dtype}. For float targets use "
      "objective='regression'."
    )
  _check_leading(logits_BxC, labels_B, "classification", "(B, num_classes)")
  loss_B = cross_entropy(logits_BxC, labels_B, label_smoothing)
  correct_B = (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)
  return loss_B, {"accuracy": correct_B}


def regression(
  preds: jax.Array, batch: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean squared error against `batch["label"]`, float (B,) or (B, ...).

  `preds` holds as many values per example as the label: a (B, 1) output fits a (B,) label.

  Returns:
    (B,) mean squared errors and {"mse", "mae"}, each (B,).
  """
  labels = batch["label"]
  if not jnp.issubdtype(labels.dtype, jnp.floating):
    raise ValueError(
      f"objective 'regression' needs float targets in batch['label']; got dtype "
      f"{labels.dtype}. For class ids use objective='classification'."
    )
  size = math.prod(labels.shape[1:])
  if preds.shape[0] != labels.shape[0] or math.prod(preds.shape[1:]) != size:
    raise ValueError(
      f"objective 'regression' needs {size} output(s) per example to match batch['label'] "
      f"of shape {labels.shape}; the model gave {preds.shape}."
    )
  shape = (labels.shape[0], size)
  error_BxN = jnp.reshape(preds.astype(jnp.float32), shape) - jnp.reshape(labels, shape)
  mse_B = jnp.mean(jnp.square(error_BxN), axis=1)
  return mse_B, {"mse": mse_B, "mae": jnp.mean(jnp.abs(error_BxN), axis=1)}


def next_token(
  logits_BxLxV: jax.Array, batch: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of each target token `batch["label"]` (B, L), averaged per example.

  `batch["weights"]` (B, L), if present, is 1 for real targets and 0 for padding; padded
  targets count for nothing.

  Returns:
    (B,) mean per-token losses (nats) and {"accuracy", "bits_per_token"}, each (B,).
  """
  labels_BxL = batch["label"]
  if labels_BxL.ndim != 2 or not jnp.issubdtype(labels_BxL.dtype, jnp.integer):
    raise ValueError(
      "objective 'next_token' needs batch['label'] of shape (B, L) holding integer token ids; "
      f"got shape {labels_BxL.shape} and dtype {labels_BxL.dtype}."
    )
  if logits_BxLxV.shape[:2] != labels_BxL.shape:
    raise ValueError(
      f"objective 'next_token' needs logits of shape (B, L, vocab) = {labels_BxL.shape} + "
      f"(vocab,); the model gave {logits_BxLxV.shape}."
    )
  weights_BxL = batch.get("weights", jnp.ones(labels_BxL.shape, jnp.float32))
  tokens_B = jnp.maximum(jnp.sum(weights_BxL, axis=1), 1.0)

  def per_example(values_BxL):
    return jnp.sum(values_BxL * weights_BxL, axis=1) / tokens_B

  loss_B = per_example(
    optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV.astype(jnp.float32), labels_BxL)
  )
  correct_BxL = (jnp.argmax(logits_BxLxV, -1) == labels_BxL).astype(jnp.float32)
  return loss_B, {"accuracy": per_example(correct_BxL), "bits_per_token": loss_B / math.log(2)}


def _check_leading(outputs: jax.Array, labels: jax.Array, name: str, expected: str) -> None:
  if outputs.ndim != 2 or outputs.shape[0] != labels.shape[0]:
    raise ValueError(
      f"objective {name!r} needs model outputs of shape {expected} for {labels.shape[0]} "
      f"examples; the model gave {outputs.shape}."
    )


OBJECTIVES = {"classification": classification, "regression": regression, "next_token": next_token}
METRICS = {
  "classification": ("accuracy",),
  "regression": ("mae", "mse", "rmse"),
  "next_token": ("accuracy", "bits_per_token"),
}


def create(name: str, *, label_smoothing: float = 0.0) -> Objective:
  """The objective called `name` (one of `OBJECTIVES`), with its options bound.

  Raises:
    ValueError: for an unknown name, or label smoothing with an objective that has no classes.
  """
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; expected one of: {', '.join(OBJECTIVES)}.")
  if name == "classification" and label_smoothing:
    return functools.partial(classification, label_smoothing=label_smoothing)
  if label_smoothing:
    raise ValueError(
      f"label_smoothing applies to objective 'classification'; got {label_smoothing} "
      f"with objective {name!r}."
    )
  return OBJECTIVES[name]
