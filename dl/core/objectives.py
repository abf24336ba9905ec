"""What a model is trained to do: the loss and metrics of each example of a batch.

An objective maps `(outputs, batch) -> (loss_B, metrics)` with per-example values: `loss_B`
is (B,) and `metrics` is {name: (B,)}. `dl.train_step` averages them over the batch;
`dl.inference.eval_step` sums them, weighted by the batch's "mask", so that evaluation is
exact over padded batches.

`Objective` wraps such a function with what the rest of dl needs to know about it: which of
its metrics are better when lower (choosing the best checkpoint), which one chooses the best
checkpoint, and how outputs become predictions. Any plain function with the contract works
too (`as_objective`): its loss is minimised and chooses the best checkpoint.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

ObjectiveFn = Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def _identity(x):
  return x


@dataclasses.dataclass(frozen=True)
class Objective:
  """A per-example loss and metrics, and how to read them.

  Attributes:
    fn: `(outputs, batch) -> (loss_B, {name: (B,)})`.
    metrics: the names of the metrics `fn` returns (a config's `best_metric` is checked
      against them; `dl.evaluate` reports what `fn` actually returns).
    lower_is_better: metrics (besides "loss", always lower) for which smaller is better.
    select: the eval metric that chooses the best checkpoint.
    predictions: model outputs -> what `dl.predict` returns (e.g. softmax probabilities).
    summarize: eval means -> eval means with derived values (e.g. rmse from mse).
    classes: the batch key holding integer class ids that index the model's last output
      axis (e.g. "label"), checked at the door (`dl.task`) against the model's number of
      outputs; None when the objective reads no such ids.

  Calling it checks, when traced, that the loss and every metric hold one value per example,
  shape (B,) for a batch of B; a loss reduced to a scalar would train while weighting
  padded and masked examples wrongly.
  """

  fn: ObjectiveFn
  metrics: tuple[str, ...] = ()
  lower_is_better: frozenset[str] = frozenset()
  select: str = "loss"
  predictions: Callable[[jax.Array], jax.Array] = _identity
  summarize: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = _identity
  classes: str | None = None

  def __call__(self, outputs, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    result = self.fn(outputs, batch)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping)):
      raise TypeError(
        f"objective {_name(self.fn)} must return (loss_B, {{name: metric_B}}); got "
        f"{type(result).__name__}."
      )
    _check_per_example(self.fn, batch, *result)
    return result

  def mode(self, metric: str) -> str:
    """ "min" if smaller `metric` is better, else "max"."""
    return "min" if metric == "loss" or metric in self.lower_is_better else "max"


def _name(fn: Callable) -> str:
  fn = getattr(fn, "func", fn)  # functools.partial
  return repr(getattr(fn, "__qualname__", type(fn).__name__))


def _check_per_example(fn: Callable, batch, loss, metrics) -> None:
  """Raises a ValueError unless the loss and each metric are (B,): one value per example."""
  sizes = {np.shape(v)[0] for v in jax.tree.leaves(batch) if np.ndim(v)}
  if len(sizes) != 1:
    return  # the step's own batch check names uneven lengths
  (size,) = sizes
  wrong = {
    name: np.shape(value)
    for name, value in {"loss": loss, **metrics}.items()
    if np.shape(value) != (size,)
  }
  if wrong:
    raise ValueError(
      f"objective {_name(fn)} must return one value per example, shape ({size},) for this "
      f"batch of {size}, for the loss and every metric; got shapes {wrong}. Return the "
      "per-example values (e.g. optax.softmax_cross_entropy_with_integer_labels(...), not its "
      ".mean()); average a (B, ...) loss over its other axes inside the objective, weighting "
      "padded positions by their mask (as `next_token` does with batch['weights'])."
    )


def as_objective(objective: "Objective | ObjectiveFn") -> Objective:
  """`objective` as an `Objective` (a plain function: loss minimised, chooses the best)."""
  if isinstance(objective, Objective):
    return objective
  if not callable(objective):
    raise TypeError(
      "an objective must be a function (outputs, batch) -> (loss_B, metrics) or a "
      f"dl.core.objectives.Objective; got {type(objective).__name__}."
    )
  return Objective(objective)


def cross_entropy(
  logits_BxC: jax.Array, labels_B: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels, optionally smoothed."""
  if label_smoothing == 0.0:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
  targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BxC.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits_BxC, targets_BxC)


def _classification(
  logits_BxC: jax.Array, batch: dict[str, jax.Array], *, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Softmax cross-entropy against `batch["label"]` (B,) integer class ids.

  A mixup batch (`dl.data.augment.Mixup`) also holds "mix_label" and "mix_weight" (B,): the
  loss is then `w * CE(label) + (1 - w) * CE(mix_label)`; accuracy counts `label`.

  Returns:
    (B,) losses and {"accuracy": (B,) 0/1}.
  """
  labels_B = _label(batch, "classification")
  if labels_B.ndim != 1 or not jnp.issubdtype(labels_B.dtype, jnp.integer):
    raise ValueError(
      f"objective 'classification' needs batch['label'] of shape (B,) holding integer class "
      f"ids; got shape {labels_B.shape} and dtype {labels_B.dtype}. For float targets use "
      "objective='regression'."
    )
  _check_leading(logits_BxC, labels_B, "classification", "(B, num_classes)")
  loss_B = cross_entropy(logits_BxC, labels_B, label_smoothing)
  if "mix_weight" in batch:
    weight_B = batch["mix_weight"]
    partner_loss_B = cross_entropy(logits_BxC, batch["mix_label"], label_smoothing)
    loss_B = weight_B * loss_B + (1 - weight_B) * partner_loss_B
  correct_B = (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)
  return loss_B, {"accuracy": correct_B}


def _regression(
  preds: jax.Array, batch: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean squared error against `batch["label"]`, float (B,) or (B, ...).

  `preds` holds as many values per example as the label: a (B, 1) output fits a (B,) label.

  Returns:
    (B,) mean squared errors and {"mse", "mae"}, each (B,).
  """
  labels = _label(batch, "regression")
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


def _next_token(
  logits_BxLxV: jax.Array, batch: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of each target token `batch["label"]` (B, L), averaged per example.

  `batch["weights"]` (B, L), if present, is 1 for real targets and 0 for padding; padded
  targets count for nothing.

  Returns:
    (B,) mean per-token losses (nats) and {"accuracy", "bits_per_token"}, each (B,).
  """
  labels_BxL = _label(batch, "next_token")
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


def _label(batch, name: str) -> jax.Array:
  if "label" not in batch:
    raise ValueError(
      f"objective {name!r} reads batch['label']; the batch has keys {sorted(batch)}."
    )
  return batch["label"]


def _check_leading(outputs: jax.Array, labels: jax.Array, name: str, expected: str) -> None:
  if outputs.ndim != 2 or outputs.shape[0] != labels.shape[0]:
    raise ValueError(
      f"objective {name!r} needs model outputs of shape {expected} for {labels.shape[0]} "
      f"examples; the model gave {outputs.shape}."
    )


def _with_rmse(means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return means | {"rmse": np.sqrt(means["mse"])} if "mse" in means else means


classification = Objective(
  _classification,
  metrics=("accuracy",),
  select="accuracy",
  predictions=jax.nn.softmax,
  classes="label",
)
regression = Objective(
  _regression,
  metrics=("mae", "mse", "rmse"),
  lower_is_better=frozenset({"mae", "mse", "rmse"}),
  summarize=_with_rmse,
)
next_token = Objective(
  _next_token,
  metrics=("accuracy", "bits_per_token"),
  lower_is_better=frozenset({"bits_per_token"}),
  classes="label",
)
OBJECTIVES = {"classification": classification, "regression": regression, "next_token": next_token}


def create(name: str, *, label_smoothing: float = 0.0) -> Objective:
  """The objective called `name` (one of `OBJECTIVES`), with its options bound.

  Raises:
    ValueError: for an unknown name, or label smoothing with an objective that has no classes.
  """
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; expected one of: {', '.join(OBJECTIVES)}.")
  if name == "classification" and label_smoothing:
    fn = functools.partial(_classification, label_smoothing=label_smoothing)
    return dataclasses.replace(classification, fn=fn)
  if label_smoothing:
    raise ValueError(
      f"label_smoothing applies to objective 'classification'; got {label_smoothing} "
      f"with objective {name!r}."
    )
  return OBJECTIVES[name]
