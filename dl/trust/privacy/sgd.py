"""DP-SGD as a pure step: per-example clipping, Gaussian noise once per logical batch.

`dp_train_step` has `dl.train_step`'s contract, `(state, batch) -> (state, metrics)`, so it is
compiled the same ways (`jax.jit`, `lax.scan`, `jax.vmap` for ensembles, pmap, meshes).
Each example's gradient is clipped to L2 norm `l2_clip` (`optax`'s per-example clip) and the
clipped gradients are summed; Gaussian noise of standard deviation `noise_multiplier * l2_clip`
is added once per logical batch. Under Poisson sampling (`dl.trust.privacy.sampling`) a batch is
padded to a fixed size: its "mask" marks the real examples, and padded ones add exactly zero.
The sum is divided by the *expected* batch size, a constant: dividing by the number of
examples drawn would make the update depend on it.

With gradient accumulation (`optax.MultiSteps` over k micro-batches), micro-batch i
passes `(clipped_sum_i + [i == k-1] * noise) / B` to the optimizer (B: the expected
micro-batch size), whose mean over the k micro-batches is `(sum of all clipped gradients +
noise) / (k * B)`: exactly one large batch, with its noise drawn once.
"""

import jax
import jax.numpy as jnp
import optax

from dl.core import objectives
from dl.models.adapters import Model, as_model
from dl.training import steps
from dl.training.state import TrainState


def dp_train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model: Model,
  tx: optax.GradientTransformation,
  l2_clip: float,
  noise_multiplier: float,
  accum_steps: int = 1,
  objective: objectives.Objective = objectives.classification,
  expected_batch_size: float | None = None,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One DP-SGD step on one (micro-)batch.

  Args:
    state: the current state; its model must have no batch statistics (BatchNorm mixes
      examples, which per-example clipping cannot bound).
    batch: the model's inputs and what `objective` reads, e.g. {"input", "label"}; with a
      "mask" (1 real, 0 padding), padded examples count for nothing.
    model: `init`/`apply` of the model (`dl.Linen`, `dl.NNX`).
    tx: the optimizer; an `optax.MultiSteps` over `accum_steps` micro-batches when
      accumulating (it averages what each micro-batch passes it).
    l2_clip: each example's gradient is scaled down to at most this L2 norm.
    noise_multiplier: noise standard deviation over `l2_clip` (0: clipping only).
    accum_steps: micro-batches per logical batch; noise is added on the last of them
      (steps `s` with `s % accum_steps == accum_steps - 1`).
    objective: `(outputs, batch) -> (loss_B, metrics)`, per example (`dl.core.objectives`).
    expected_batch_size: divides the noisy sum: the expected number of examples per
      (micro-)batch under Poisson sampling (`q * N / accum_steps`, over all devices). None:
      the number of real examples in the batch (fixed-size batches).
    axis_name: under `jax.pmap`, the device axis: clipped sums are added over devices and
      every device adds the same noise, once.

  Returns:
    The new state and {"loss", **objective's metrics, "clipped"} of this batch's real examples
    (before the update); "clipped" is the fraction whose gradient norm exceeded `l2_clip`.
  """
  model = as_model(model)
  steps.check_batch(batch, model.inputs)
  if jax.tree.leaves(state.model_state):
    raise ValueError(
      "DP-SGD needs per-example gradients, so a model without batch statistics "
      f"(e.g. mlp or cnn); got model state {sorted(state.model_state)}."
    )
  dropout_rng, noise_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  if axis_name is not None:
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
  loss_B, metrics_B, grads_B = _per_example(state.params, batch, model, dropout_rng, objective)
  mask_B = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones_like(loss_B)
  # A padded example's gradient becomes zero, which clipping keeps zero: it adds nothing.
  grads_B = jax.tree.map(lambda g: g * mask_B.reshape(-1, *[1] * (g.ndim - 1)), grads_B)
  grads_flat, treedef = jax.tree.flatten(grads_B)
  summed_flat, num_clipped = optax.transforms.per_example_global_norm_clip(grads_flat, l2_clip)
  summed = jax.tree.unflatten(treedef, summed_flat)
  sums = {
    "loss": jnp.sum(loss_B * mask_B),
    **{name: jnp.sum(v * mask_B) for name, v in metrics_B.items()},
    "clipped": num_clipped.astype(jnp.float32),
  }
  count = jnp.sum(mask_B)
  if axis_name is not None:
    summed, sums, count = jax.lax.psum((summed, sums, count), axis_name)
  metrics = {name: total / jnp.maximum(count, 1.0) for name, total in sums.items()}
  denominator = count if expected_batch_size is None else expected_batch_size
  is_last = (state.step % accum_steps == accum_steps - 1).astype(jnp.float32)
  noise = optax.tree_utils.tree_random_like(noise_rng, summed)
  std = noise_multiplier * l2_clip * is_last
  grads = jax.tree.map(lambda s, n: (s + std * n) / denominator, summed, noise)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  )
  return new_state, metrics


def _per_example(params, batch, model, dropout_rng, objective):
  """Per-example losses (B,), metrics {name: (B,)} and gradients (leaves (B, ...)), train mode."""

  def loss_fn(params, example, index):
    rng = jax.random.fold_in(dropout_rng, index)  # own dropout mask per example
    example_1 = jax.tree.map(lambda x: x[None], example)
    outputs, _ = model.apply(params, {}, example_1, train=True, rng=rng)
    loss_1, metrics_1 = objective(outputs, example_1)
    return loss_1[0], jax.tree.map(lambda m: m[0], metrics_1)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  examples = {k: v for k, v in batch.items() if k != "mask"}
  indices_B = jnp.arange(next(iter(examples.values())).shape[0])
  (loss_B, metrics_B), grads_B = jax.vmap(grad_fn, in_axes=(None, 0, 0))(
    params, examples, indices_B
  )
  return loss_B, metrics_B, grads_B
