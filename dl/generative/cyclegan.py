"""Unpaired image-to-image translation: a CycleGAN pair (Zhu et al., 2017) in one pure step.

Two translators, A->B and B->A, and two discriminators, one per domain. The translators
minimise the non-saturating GAN loss of their outputs plus `cycle_weight` times the L1 error
of A->B->A and B->A->B round trips (and optionally an identity term); the discriminators
the usual real-vs-translated BCE.
The state is a `gan.GANState` whose `gen_params` are {"a_to_b", "b_to_a"} and whose
`disc_params` are {"a", "b"}. Images are in [-1, 1].

`CycleGAN` binds the step and the two domains' images into a part that `dl.fit` trains; its
batches zip one shuffled stream per domain, and their positions go into every checkpoint:

  cycle = cyclegan.CycleGAN(Translator(), dcgan.Discriminator(), tx, tx,
                            train={"a": x_a, "b": x_b}, test={"a": ..., "b": ...})
  state, history = dl.fit(cycle, workdir, num_steps=3000, batch_size=64)
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl import inference
from dl.data.batches import ShuffledBatches, padded_batches
from dl.generative import datasets, gan


class Translator(nn.Module):
  """An image to an image of the same size: 3x3 ReLU convs, a residual tanh output.

  Attributes:
    width: channels of the hidden convs.
    depth: number of hidden convs.
  """

  width: int = 32
  depth: int = 3

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    h = x_BxHxWxC
    for _ in range(self.depth):
      h = nn.relu(nn.Conv(self.width, (3, 3))(h))
    return jnp.tanh(nn.Conv(x_BxHxWxC.shape[-1], (3, 3))(h) + jnp.arctanh(0.999 * x_BxHxWxC))


def create_state(
  translator: nn.Module,
  discriminator: nn.Module,
  gen_tx: optax.GradientTransformation,
  disc_tx: optax.GradientTransformation,
  rng: jax.Array,
  *,
  image_shape: tuple[int, ...],
) -> gan.GANState:
  """Both translators, both discriminators (unconditional, no mutable state), both optimizers."""
  keys = jax.random.split(rng, 5)
  x = jnp.zeros((1, *image_shape))
  gen_params = {
    "a_to_b": translator.init(keys[0], x)["params"],
    "b_to_a": translator.init(keys[1], x)["params"],
  }
  disc_params = {
    "a": discriminator.init(keys[2], x)["params"],
    "b": discriminator.init(keys[3], x)["params"],
  }
  return gan.GANState(
    step=jnp.zeros((), jnp.int32),
    gen_params=gen_params,
    disc_params=disc_params,
    disc_state={},
    gen_opt_state=gen_tx.init(gen_params),
    disc_opt_state=disc_tx.init(disc_params),
    rng=keys[4],
  )


def translate(translator: nn.Module, params: Any, x_BxHxWxC: jax.Array) -> jax.Array:
  """Applies one translator, e.g. `params=state.gen_params["a_to_b"]`."""
  return translator.apply({"params": params}, x_BxHxWxC)


def train_step(
  state: gan.GANState,
  batch: dict[str, jax.Array],
  *,
  translator: nn.Module,
  discriminator: nn.Module,
  gen_tx: optax.GradientTransformation,
  disc_tx: optax.GradientTransformation,
  cycle_weight: float = 10.0,
  identity_weight: float = 0.0,
) -> tuple[gan.GANState, dict[str, jax.Array]]:
  """One update of both discriminators, then of both translators.

  Args:
    state: see `create_state`.
    batch: {"a": (B, H, W, C), "b": (B', H, W, C)}: unpaired images of the two domains.
    translator: the translator's Flax module (one definition, two parameter sets: A->B, B->A).
    discriminator: the discriminator's Flax module (one definition, two parameter sets).
    gen_tx: the optimizer of the translators.
    disc_tx: the optimizer of the discriminators.
    cycle_weight: weight of the L1 cycle-consistency loss.
    identity_weight: weight of the L1 identity loss |A->B(b) - b| + |B->A(a) - a|
      (Zhu et al. use half the cycle weight; it keeps intensities and shapes that already
      fit the target domain).

  Returns:
    The new state and {"disc_loss", "gen_loss", "cycle_loss"} of this batch.
  """
  real = {"a": batch["a"], "b": batch["b"]}

  def disc(params, x):
    return discriminator.apply({"params": params}, x)

  def translated(gen_params):  # domain -> images translated INTO it
    return {
      "b": translate(translator, gen_params["a_to_b"], real["a"]),
      "a": translate(translator, gen_params["b_to_a"], real["b"]),
    }

  fake = jax.lax.stop_gradient(translated(state.gen_params))

  def disc_loss_fn(params):
    return sum(
      gan.discriminator_loss(disc(params[d], real[d]), disc(params[d], fake[d])) for d in real
    )

  disc_loss, grads = jax.value_and_grad(disc_loss_fn)(state.disc_params)
  updates, disc_opt_state = disc_tx.update(grads, state.disc_opt_state, state.disc_params)
  disc_params = optax.apply_updates(state.disc_params, updates)

  def gen_loss_fn(params):
    fakes = translated(params)
    adversarial = sum(gan.generator_loss(disc(disc_params[d], fakes[d])) for d in real)
    back = {  # domain -> its images after a round trip through the other domain
      "a": translate(translator, params["b_to_a"], fakes["b"]),
      "b": translate(translator, params["a_to_b"], fakes["a"]),
    }
    cycle = sum(jnp.mean(jnp.abs(back[d] - real[d])) for d in real)
    loss = adversarial + cycle_weight * cycle
    if identity_weight:
      same = {
        "b": translate(translator, params["a_to_b"], real["b"]),
        "a": translate(translator, params["b_to_a"], real["a"]),
      }
      loss += identity_weight * sum(jnp.mean(jnp.abs(same[d] - real[d])) for d in real)
    return loss, (adversarial, cycle)

  (_, (gen_loss, cycle)), grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(state.gen_params)
  updates, gen_opt_state = gen_tx.update(grads, state.gen_opt_state, state.gen_params)
  new_state = state.replace(
    step=state.step + 1,
    gen_params=optax.apply_updates(state.gen_params, updates),
    disc_params=disc_params,
    gen_opt_state=gen_opt_state,
    disc_opt_state=disc_opt_state,
  )
  return new_state, {"disc_loss": disc_loss, "gen_loss": gen_loss, "cycle_loss": cycle}


@dataclasses.dataclass(frozen=True, eq=False)
class CycleGAN:
  """Two domains' images and the CycleGAN that translates between them, for `dl.fit`.

  Attributes:
    translator: the translator's Flax module (one definition, two parameter sets: A->B, B->A).
    discriminator: the discriminator's Flax module (one definition, two parameter sets).
    gen_tx: the optimizer of the translators.
    disc_tx: the optimizer of the discriminators.
    train: {"a": (N, H, W, C), "b": (N', H, W, C)} unpaired images in [-1, 1].
    eval, test: held-out images of both domains in the same form, or None; evaluation
      reports their mean L1 round-trip errors.
    cycle_weight, identity_weight: see `train_step`.
    name: shown on the progress bar and the plot.
  """

  translator: nn.Module
  discriminator: nn.Module
  gen_tx: optax.GradientTransformation
  disc_tx: optax.GradientTransformation
  train: Mapping[str, np.ndarray]
  eval: Mapping[str, np.ndarray] | None = None
  test: Mapping[str, np.ndarray] | None = None
  cycle_weight: float = 10.0
  identity_weight: float = 0.0
  name: str = "cyclegan"
  selection = None  # Round-trip error alone does not say which translator is best.

  def __post_init__(self):
    for split in ("train", "eval", "test"):
      arrays = getattr(self, split)
      if arrays is not None and (
        set(arrays) != {"a", "b"} or arrays["a"].shape[1:] != arrays["b"].shape[1:]
      ):
        raise ValueError(
          f"{split} must be {{'a': (N, H, W, C), 'b': (N', H, W, C)}}: images of both domains "
          f"of one shape; got { {k: np.shape(v) for k, v in arrays.items()} }."
        )

  def init(self, seed: int) -> gan.GANState:
    """Both translators, both discriminators and both optimizers, from `seed`; step 0."""
    return create_state(
      self.translator,
      self.discriminator,
      self.gen_tx,
      self.disc_tx,
      jax.random.PRNGKey(seed),
      image_shape=self.train["a"].shape[1:],
    )

  def step(self, state: gan.GANState, batch):
    """`train_step` with this CycleGAN's networks, optimizers and weights bound."""
    return train_step(
      state,
      batch,
      translator=self.translator,
      discriminator=self.discriminator,
      gen_tx=self.gen_tx,
      disc_tx=self.disc_tx,
      cycle_weight=self.cycle_weight,
      identity_weight=self.identity_weight,
    )

  def batches(
    self, batch_size: int, *, seed: int, shard_index: int = 0, num_shards: int = 1
  ) -> datasets.ZippedBatches:
    """{"a": (B, ...), "b": (B, ...)}: one shuffled stream per domain (seeds 2 seed, 2 seed + 1)."""
    return datasets.ZippedBatches(
      {
        d: ShuffledBatches(
          {"input": self.train[d]},
          batch_size,
          2 * seed + i,
          shard_index=shard_index,
          num_shards=num_shards,
        )
        for i, d in enumerate(("a", "b"))
      }
    )

  def evaluate(
    self, state: gan.GANState, split: str = "eval", batch_size: int = inference.EVAL_BATCH_SIZE
  ):
    """Mean L1 round-trip errors on `split`'s images: "cycle_a", "cycle_b" and their sum
    "cycle_loss" (as in training); None when there are none."""
    arrays = {"eval": self.eval, "test": self.test}[split]
    if arrays is None:
      return None
    there_and_back = _jitted_round_trip(self.translator)
    errors = {}
    for d, (there, back) in (("a", ("a_to_b", "b_to_a")), ("b", ("b_to_a", "a_to_b"))):
      total = 0.0
      for batch in padded_batches({"input": arrays[d]}, min(batch_size, len(arrays[d]))):
        error_B = there_and_back(state.gen_params[there], state.gen_params[back], batch["input"])
        total += float(np.sum(np.asarray(error_B) * batch["mask"]))
      errors[f"cycle_{d}"] = total / len(arrays[d])
    return {"cycle_loss": errors["cycle_a"] + errors["cycle_b"], **errors}


@functools.cache
def _jitted_round_trip(translator: nn.Module):
  def error_B(there, back, x_BxHxWxC):
    x = translate(translator, back, translate(translator, there, x_BxHxWxC))
    return jnp.mean(jnp.abs(x - x_BxHxWxC), axis=tuple(range(1, x_BxHxWxC.ndim)))

  return jax.jit(error_B)
