"""Variational autoencoders (Kingma & Welling, 2014): the ELBO with the reparameterisation trick.

The encoder outputs the mean and log-variance of q(z|x) (2Z numbers); the decoder the
logits of a Bernoulli p(x|z) per pixel; the prior is N(0, I). For an image x in [0, 1]

  ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || N(0, I))   (nats; a lower bound on log p(x)),

estimated with one z = mean + exp(logvar / 2) * eps, eps ~ N(0, I), drawn from the key
passed in: the model itself holds no randomness.

  model = vae.VAE(*networks.encoder_decoder("conv", (28, 28, 1), 2 * 16, 32))
  state = vae.create_state(model, tx, key, (28, 28, 1))
  state, metrics = jax.jit(functools.partial(vae.train_step, model=model, tx=tx))(state, batch)
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl.training.state import TrainState


class VAE(nn.Module):
  """An encoder to 2Z numbers (mean, log-variance) and a decoder from Z to pixel logits."""

  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, x_BxHxWxC: jax.Array, rng: jax.Array):
    """(logits (B, H, W, C), mean (B, Z), logvar (B, Z)) with z drawn from `rng`."""
    mean_BxZ, logvar_BxZ = self.encode(x_BxHxWxC)
    return self.decoder(reparameterize(rng, mean_BxZ, logvar_BxZ)), mean_BxZ, logvar_BxZ

  def encode(self, x_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    out_Bx2Z = self.encoder(x_BxHxWxC)
    if out_Bx2Z.shape[-1] % 2:
      raise ValueError(f"a VAE encoder must output 2Z numbers; got {out_Bx2Z.shape[-1]}.")
    mean_BxZ, logvar_BxZ = jnp.split(out_Bx2Z, 2, axis=-1)
    return mean_BxZ, logvar_BxZ

  def decode(self, z_BxZ: jax.Array) -> jax.Array:
    """Images (B, H, W, C) in [0, 1]: the Bernoulli means."""
    return jax.nn.sigmoid(self.decoder(z_BxZ))


def reparameterize(rng: jax.Array, mean_BxZ: jax.Array, logvar_BxZ: jax.Array) -> jax.Array:
  """z = mean + sigma * eps: a sample of N(mean, exp(logvar)) differentiable in both."""
  return mean_BxZ + jnp.exp(0.5 * logvar_BxZ) * jax.random.normal(rng, mean_BxZ.shape)


def kl_to_standard_normal(mean_BxZ: jax.Array, logvar_BxZ: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example (B,), in closed form."""
  return 0.5 * jnp.sum(jnp.exp(logvar_BxZ) + jnp.square(mean_BxZ) - 1.0 - logvar_BxZ, axis=-1)


def elbo(model: nn.Module, params, x_BxHxWxC: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
  """Per-example (B,) "elbo", "reconstruction" (-log p(x|z)) and "kl", in nats."""
  logits, mean_BxZ, logvar_BxZ = model.apply({"params": params}, x_BxHxWxC, rng)
  bce = optax.sigmoid_binary_cross_entropy(logits, x_BxHxWxC)
  reconstruction_B = bce.sum(axis=tuple(range(1, bce.ndim)))
  kl_B = kl_to_standard_normal(mean_BxZ, logvar_BxZ)
  return {"elbo": -(reconstruction_B + kl_B), "reconstruction": reconstruction_B, "kl": kl_B}


def create_state(
  model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, ...]
) -> TrainState:
  """A `dl.TrainState` (step 0) for a VAE on images of `image_shape`."""
  init_rng, rng = jax.random.split(rng)
  params = model.init(init_rng, jnp.zeros((1, *image_shape)), init_rng)["params"]
  return TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), rng)


def train_step(
  state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, tx
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step on the negative ELBO of batch["input"] (B, H, W, C) in [0, 1].

  The noise of step s comes from `fold_in(state.rng, s)`. Returns the new state and the
  batch means of "loss" (= -elbo), "elbo", "reconstruction" and "kl".
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    terms = jax.tree.map(jnp.mean, elbo(model, params, batch["input"], rng))
    return -terms["elbo"], terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  )
  return new_state, {"loss": loss, **terms}


def evaluate(
  model: nn.Module, params, x_NxHxWxC: np.ndarray, rng: jax.Array, *, batch_size: int = 1000
) -> dict[str, float]:
  """Mean "elbo", "reconstruction" and "kl" (nats per image) over all of `x_NxHxWxC`."""
  fn = _jitted_elbo(model)
  sums, n = {}, len(x_NxHxWxC)
  for i in range(0, n, batch_size):
    terms = fn(params, jnp.asarray(x_NxHxWxC[i : i + batch_size]), jax.random.fold_in(rng, i))
    for k, v in terms.items():
      sums[k] = sums.get(k, 0.0) + float(jnp.sum(v))
  return {k: v / n for k, v in sums.items()}


@functools.cache
def _jitted_elbo(model: nn.Module):
  return jax.jit(functools.partial(elbo, model))


def interpolate(
  model: nn.Module, params, x_a: jax.Array, x_b: jax.Array, num_steps: int = 8
) -> jax.Array:
  """Decodes `num_steps` points on the line between the posterior means of two images.

  Args:
    x_a, x_b: (P, H, W, C) pairs of images.

  Returns:
    (P, num_steps, H, W, C) decoded images in [0, 1], from x_a's code to x_b's.
  """
  mean_a, _ = model.apply({"params": params}, x_a, method=VAE.encode)
  mean_b, _ = model.apply({"params": params}, x_b, method=VAE.encode)
  t_T = jnp.linspace(0.0, 1.0, num_steps)
  z_PxTxZ = mean_a[:, None] + t_T[None, :, None] * (mean_b - mean_a)[:, None]
  p, t, z = z_PxTxZ.shape
  decoded = model.apply({"params": params}, z_PxTxZ.reshape((p * t, z)), method=VAE.decode)
  return decoded.reshape((p, t, *decoded.shape[1:]))


def sample(model: nn.Module, params, rng: jax.Array, num: int, latent_dim: int) -> jax.Array:
  """`num` images (num, H, W, C) in [0, 1] decoded from prior draws z ~ N(0, I)."""
  z = jax.random.normal(rng, (num, latent_dim))
  return model.apply({"params": params}, z, method=VAE.decode)
