"""Differential privacy: DP-SGD (per-example clipping, Gaussian noise) and its accountant.

`dp_train_step` has `dl.train_step`'s contract, `(state, batch) -> (state, metrics)`, so it is
compiled the same ways (`jax.jit`, `lax.scan`, `jax.vmap` for ensembles, pmap, meshes).
Each example's gradient is clipped to L2 norm `l2_clip` (`optax`'s per-example clip) and the
clipped gradients are summed; Gaussian noise of standard deviation `noise_multiplier * l2_clip`
is added once per logical batch.

With gradient accumulation (`optax.MultiSteps` over k micro-batches of B), micro-batch i
passes `(clipped_sum_i + [i == k-1] * noise) / B` to the optimizer, whose mean over the k
micro-batches is `(sum of all clipped gradients + noise) / (k * B)`: exactly one large batch
of k * B examples, with its noise drawn once.

The privacy spent is computed by Google's `dp_accounting` (RDP accountant, a Poisson-sampled
Gaussian mechanism composed once per logical batch). dl samples batches by shuffling, not
Poisson sampling; reporting the Poisson epsilon for shuffled batches is the usual practice
(as in Opacus and TF Privacy), not a proof.
"""

import contextlib
import functools
import logging

import jax
import jax.numpy as jnp
import optax

from dl import objectives
from dl.models.adapters import Model, as_model
from dl.training import loop, steps
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
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One DP-SGD step on one (micro-)batch.

  Args:
    state: the current state; its model must have no batch statistics (BatchNorm mixes
      examples, which per-example clipping cannot bound).
    batch: the model's inputs and what `objective` reads, e.g. {"input", "label"}.
    model: `init`/`apply` of the model (`dl.Linen`, `dl.NNX`).
    tx: the optimizer; an `optax.MultiSteps` over `accum_steps` micro-batches when
      accumulating (it averages what each micro-batch passes it).
    l2_clip: each example's gradient is scaled down to at most this L2 norm.
    noise_multiplier: noise standard deviation over `l2_clip` (0: clipping only).
    accum_steps: micro-batches per logical batch; noise is added on the last of them
      (steps `s` with `s % accum_steps == accum_steps - 1`).
    objective: `(outputs, batch) -> (loss_B, metrics)`, per example (`dl.objectives`).
    axis_name: under `jax.pmap`, the device axis: clipped sums are added over devices and
      every device adds the same noise, once.

  Returns:
    The new state and {"loss", **objective's metrics, "clipped"} of this batch (before the update);
    "clipped" is the fraction of examples whose gradient norm exceeded `l2_clip`.
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
  grads_flat, treedef = jax.tree.flatten(grads_B)
  summed_flat, num_clipped = optax.transforms.per_example_global_norm_clip(grads_flat, l2_clip)
  summed = jax.tree.unflatten(treedef, summed_flat)
  batch_size = loss_B.shape[0]
  metrics = {
    "loss": loss_B.mean(),
    **{name: v.mean() for name, v in metrics_B.items()},
    "clipped": num_clipped / batch_size,
  }
  if axis_name is not None:
    summed = jax.lax.psum(summed, axis_name)
    metrics = jax.lax.pmean(metrics, axis_name)
    batch_size = batch_size * jax.lax.psum(1, axis_name)
  is_last = (state.step % accum_steps == accum_steps - 1).astype(jnp.float32)
  noise = optax.tree_utils.tree_random_like(noise_rng, summed)
  std = noise_multiplier * l2_clip * is_last
  grads = jax.tree.map(lambda s, n: (s + std * n) / batch_size, summed, noise)
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


class BudgetHook(loop.Hook):
  """Adds "epsilon", the privacy spent so far at `delta`, to every train record.

  Args:
    num_examples: training examples (the sampling rate is `batch_size / num_examples`).
    batch_size: examples per logical batch (micro-batch size times `accum_steps`).
    noise_multiplier: DP-SGD's noise standard deviation over its clipping norm.
    delta: the delta of (epsilon, delta)-DP.
    accum_steps: micro-steps per noisy update.
  """

  def __init__(
    self,
    *,
    num_examples: int,
    batch_size: int,
    noise_multiplier: float,
    delta: float,
    accum_steps: int = 1,
  ):
    self.sampling_rate = min(batch_size / num_examples, 1.0)
    self.noise_multiplier, self.delta, self.accum_steps = noise_multiplier, delta, accum_steps

  def on_log(self, step: int, record: dict) -> dict:
    del record
    updates = step // self.accum_steps
    return {"epsilon": epsilon(self.sampling_rate, self.noise_multiplier, updates, self.delta)}


@functools.cache
def epsilon(sampling_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
  """The epsilon of DP-SGD at `delta`, from `dp_accounting`'s RDP accountant.

  Args:
    sampling_rate: logical batch size over the number of training examples, in (0, 1].
    noise_multiplier: noise standard deviation over the clipping norm, > 0.
    steps: noisy updates so far (logical batches).
    delta: the delta of (epsilon, delta)-DP, in (0, 1).

  Returns:
    Epsilon (0.0 before the first step; inf when `noise_multiplier` is 0).
  """
  if not 0 < sampling_rate <= 1:
    raise ValueError(f"sampling_rate must be in (0, 1]; got {sampling_rate}.")
  if not 0 < delta < 1:
    raise ValueError(f"delta must be in (0, 1); got {delta}.")
  if steps == 0:
    return 0.0
  if noise_multiplier <= 0:
    return float("inf")
  # Imported here: dp_accounting (and the scipy it loads) adds ~1 s to `import dl`.
  import dp_accounting
  from dp_accounting import rdp

  event = dp_accounting.PoissonSampledDpEvent(
    sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
  )
  accountant = rdp.RdpAccountant()
  with _quiet_absl():
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


@contextlib.contextmanager
def _quiet_absl():
  """Silences dp_accounting's warnings for RDP orders it excludes (the bound stays valid)."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)
