"""The GAN state and its pure train step: both networks updated in one jitted call.

  state = gan.create_state(generator, discriminator, gen_tx, disc_tx, key,
                           image_shape=(28, 28, 1), latent_dim=64)
  step = jax.jit(functools.partial(gan.train_step, generator=generator,
                                   discriminator=discriminator, gen_tx=gen_tx,
                                   disc_tx=disc_tx, latent_dim=64), donate_argnums=0)
  state, metrics = step(state, {"input": real_BxHxWxC, "label": labels_B})

`dl.generative.gan_train.GAN` binds this step into a part that `dl.fit` trains (resume,
records, fused steps, compile modes).

The loss is the non-saturating one of Goodfellow et al. (2014): the discriminator
minimises BCE(D(real), 1) + BCE(D(G(z)), 0); the generator BCE(D(G(z)), 1).
An optional R1 penalty (Mescheder et al., 2018), r1_weight / 2 * E||grad_x D(real)||^2,
regularises the discriminator.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class GANState:
  """Everything that changes while a GAN trains, as one pytree.

  Attributes:
    step: train steps taken (int32 scalar).
    gen_params, disc_params: the two networks' parameters.
    disc_state: the discriminator's other collections ({"batch_stats": ...} with spectral
      normalisation), {} when none.
    gen_opt_state, disc_opt_state: the two optax optimizer states.
    rng: base key; step `s` draws its noise from `fold_in(rng, s)`.
  """

  step: jax.Array
  gen_params: Any
  disc_params: Any
  disc_state: Any
  gen_opt_state: optax.OptState
  disc_opt_state: optax.OptState
  rng: jax.Array


def create_state(
  generator: nn.Module,
  discriminator: nn.Module,
  gen_tx: optax.GradientTransformation,
  disc_tx: optax.GradientTransformation,
  rng: jax.Array,
  *,
  image_shape: tuple[int, ...],
  latent_dim: int,
) -> GANState:
  """Initialises both networks and both optimizers; step 0.

  Args:
    generator: called as `generator(z_BxZ, labels_B)`.
    discriminator: called as `discriminator(x_BxHxWxC, labels_B, train=...)`.
    gen_tx: the generator's optimizer.
    disc_tx: the discriminator's optimizer.
    rng: a PRNG key.
    image_shape: (H, W, C) of one image.
    latent_dim: Z, the size of the noise vector.
  """
  gen_rng, disc_rng, rng = jax.random.split(rng, 3)
  labels_1 = jnp.zeros((1,), jnp.int32)
  gen_params = generator.init(gen_rng, jnp.zeros((1, latent_dim)), labels_1)["params"]
  disc_vars = discriminator.init(disc_rng, jnp.zeros((1, *image_shape)), labels_1)
  disc_state, disc_params = flax.core.pop(disc_vars, "params")
  return GANState(
    step=jnp.zeros((), jnp.int32),
    gen_params=gen_params,
    disc_params=disc_params,
    disc_state=dict(disc_state),
    gen_opt_state=gen_tx.init(gen_params),
    disc_opt_state=disc_tx.init(disc_params),
    rng=rng,
  )


def discriminator_loss(real_logits_B: jax.Array, fake_logits_B: jax.Array) -> jax.Array:
  """BCE of real images labelled 1 and generated ones labelled 0 (scalar)."""
  real = optax.sigmoid_binary_cross_entropy(real_logits_B, jnp.ones_like(real_logits_B))
  fake = optax.sigmoid_binary_cross_entropy(fake_logits_B, jnp.zeros_like(fake_logits_B))
  return real.mean() + fake.mean()


def generator_loss(fake_logits_B: jax.Array) -> jax.Array:
  """The non-saturating generator loss: BCE of generated images labelled 1 (scalar)."""
  return optax.sigmoid_binary_cross_entropy(fake_logits_B, jnp.ones_like(fake_logits_B)).mean()


def r1_penalty(disc_fn, real_BxHxWxC: jax.Array) -> jax.Array:
  """Mean over examples of ||grad_x D(x)||^2 at real images; `disc_fn(x) -> logits_B`."""
  grads = jax.grad(lambda x: disc_fn(x).sum())(real_BxHxWxC)
  return jnp.mean(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))


def generate(
  generator: nn.Module, gen_params: Any, z_BxZ: jax.Array, labels_B: jax.Array | None = None
) -> jax.Array:
  """Images (B, H, W, C) in [-1, 1] from noise (and classes)."""
  return generator.apply({"params": gen_params}, z_BxZ, labels_B)


def train_step(
  state: GANState,
  batch: dict[str, jax.Array],
  *,
  generator: nn.Module,
  discriminator: nn.Module,
  gen_tx: optax.GradientTransformation,
  disc_tx: optax.GradientTransformation,
  latent_dim: int,
  r1_weight: float = 0.0,
  axis_name: str | None = None,
) -> tuple[GANState, dict[str, jax.Array]]:
  """One discriminator update, then one generator update against the updated discriminator.

  Args:
    state: the current state.
    batch: {"input": real images (B, H, W, C) in [-1, 1], "label": (B,) int}; conditional
      models generate the batch's classes, unconditional ones ignore "label".
    generator: the generator's Flax module.
    discriminator: the discriminator's Flax module.
    gen_tx: the optimizer of `state.gen_opt_state`.
    disc_tx: the optimizer of `state.disc_opt_state`.
    latent_dim: Z, the size of the noise vector.
    r1_weight: gamma of the R1 penalty on real images (0 disables it).
    axis_name: under `jax.pmap`, the device axis: each device draws its own noise, and
      gradients, metrics and the discriminator's statistics are averaged over it. None
      under `jax.jit` (also on a mesh, where shardings decide the collectives).

  Returns:
    The new state and this batch's {"disc_loss", "gen_loss", "r1", "real_prob",
    "fake_prob"} (the last two: mean D(x) on real and generated images).
  """
  real_BxHxWxC, labels_B = batch["input"], batch.get("label")
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  z_rng, z2_rng = jax.random.split(rng)
  batch_size = real_BxHxWxC.shape[0]
  mutable = list(state.disc_state)

  def disc_apply(params, disc_state, x, labels, train):
    variables = {"params": params, **disc_state}
    if train and mutable:
      return discriminator.apply(variables, x, labels, train=True, mutable=mutable)
    return discriminator.apply(variables, x, labels, train=train), disc_state

  fake_BxHxWxC = generate(
    generator, state.gen_params, jax.random.normal(z_rng, (batch_size, latent_dim)), labels_B
  )

  def disc_loss_fn(params):
    both = jnp.concatenate([real_BxHxWxC, fake_BxHxWxC])  # One pass: one power-iteration update.
    labels_2B = None if labels_B is None else jnp.concatenate([labels_B, labels_B])
    logits_2B, disc_state = disc_apply(params, state.disc_state, both, labels_2B, True)
    real_logits_B, fake_logits_B = logits_2B[:batch_size], logits_2B[batch_size:]
    r1 = jnp.zeros(())
    if r1_weight:
      r1 = r1_penalty(lambda x: disc_apply(params, disc_state, x, labels_B, False)[0], real_BxHxWxC)
    loss = discriminator_loss(real_logits_B, fake_logits_B) + 0.5 * r1_weight * r1
    return loss, (disc_state, real_logits_B, fake_logits_B, r1)

  (disc_loss, (disc_state, real_logits_B, fake_logits_B, r1)), disc_grads = jax.value_and_grad(
    disc_loss_fn, has_aux=True
  )(state.disc_params)
  if axis_name is not None:
    disc_grads, disc_state = jax.lax.pmean((disc_grads, disc_state), axis_name)
  updates, disc_opt_state = disc_tx.update(disc_grads, state.disc_opt_state, state.disc_params)
  disc_params = optax.apply_updates(state.disc_params, updates)

  def gen_loss_fn(params):
    z_BxZ = jax.random.normal(z2_rng, (batch_size, latent_dim))
    fake = generate(generator, params, z_BxZ, labels_B)
    return generator_loss(disc_apply(disc_params, disc_state, fake, labels_B, False)[0])

  gen_loss, gen_grads = jax.value_and_grad(gen_loss_fn)(state.gen_params)
  if axis_name is not None:
    gen_grads = jax.lax.pmean(gen_grads, axis_name)
  updates, gen_opt_state = gen_tx.update(gen_grads, state.gen_opt_state, state.gen_params)
  new_state = state.replace(
    step=state.step + 1,
    gen_params=optax.apply_updates(state.gen_params, updates),
    disc_params=disc_params,
    disc_state=dict(disc_state),
    gen_opt_state=gen_opt_state,
    disc_opt_state=disc_opt_state,
  )
  metrics = {
    "disc_loss": disc_loss,
    "gen_loss": gen_loss,
    "r1": r1,
    "real_prob": jnp.mean(jax.nn.sigmoid(real_logits_B)),
    "fake_prob": jnp.mean(jax.nn.sigmoid(fake_logits_B)),
  }
  if axis_name is not None:
    metrics = jax.lax.pmean(metrics, axis_name)
  return new_state, metrics
