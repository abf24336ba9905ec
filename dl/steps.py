"""The pure train and eval steps. How they are compiled is chosen where they are called.

A batch is a dict: "input" (B, ...) and "label" (B,) int32; eval batches may carry
"mask" (B,) to ignore padding.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dl.state import TrainState

ApplyFn = Callable[..., Any]


def cross_entropy(
  logits_BxC: jax.Array, labels_B: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels, optionally smoothed."""
  if label_smoothing == 0.0:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
  targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BxC.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits_BxC, targets_BxC)


def check_batch(batch: dict[str, jax.Array]) -> None:
  """Raises a ValueError unless `batch` is {"input": (B, ...), "label": (B,) integer}."""
  if not isinstance(batch, dict) or not {"input", "label"} <= set(batch):
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"a batch must be a dict with keys 'input' and 'label'; got {keys}.")
  x, y = batch["input"], batch["label"]
  if y.ndim != 1 or x.ndim < 2 or x.shape[0] != y.shape[0]:
    raise ValueError(
      f"batch['input'] must be (B, ...) and batch['label'] (B,); got shapes "
      f"{x.shape} and {y.shape}."
    )
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"batch['label'] must hold integer class ids; got dtype {y.dtype}.")


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  apply_fn: ApplyFn,
  tx: optax.GradientTransformation,
  label_smoothing: float = 0.0,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on one batch.

  Args:
    state: the current state.
    batch: {"input": (B, ...), "label": (B,)}.
    apply_fn: the model's `apply`.
    tx: the optimizer `state.opt_state` belongs to.
    label_smoothing: smoothing of the one-hot targets.
    axis_name: under `jax.pmap` (or `shard_map`), the device axis: gradients, metrics and
      batch statistics are averaged over it, and each device draws its own dropout mask.
      None under `jax.jit`, where shardings decide the collectives.

  Returns:
    The new state and {"loss", "accuracy"} of this batch (before the update).
  """
  check_batch(batch)
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
  mutable = list(state.model_state)

  def loss_fn(params):
    variables = {"params": params, **state.model_state}
    out = apply_fn(
      variables, batch["input"], train=True, rngs={"dropout": dropout_rng}, mutable=mutable or False
    )
    logits_BxC, model_state = out if mutable else (out, state.model_state)
    loss = cross_entropy(logits_BxC, batch["label"], label_smoothing).mean()
    return loss, (logits_BxC, model_state)

  (loss, (logits_BxC, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits_BxC, -1) == batch["label"])
  metrics = {"loss": loss, "accuracy": accuracy}
  if axis_name is not None:
    grads, metrics, model_state = jax.lax.pmean((grads, metrics, model_state), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    model_state=dict(model_state),
    opt_state=opt_state,
  )
  return new_state, metrics


def eval_step(
  state: TrainState, batch: dict[str, jax.Array], *, apply_fn: ApplyFn
) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the unmasked examples of `batch`."""
  logits_BxC = apply_fn({"params": state.params, **state.model_state}, batch["input"], train=False)
  mask_B = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
  loss_B = cross_entropy(logits_BxC, batch["label"])
  correct_B = (jnp.argmax(logits_BxC, -1) == batch["label"]).astype(jnp.float32)
  return {
    "loss_sum": jnp.sum(loss_B * mask_B),
    "correct": jnp.sum(correct_B * mask_B),
    "count": jnp.sum(mask_B),
  }
