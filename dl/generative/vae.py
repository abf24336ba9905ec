"""Variational autoencoders (Kingma & Welling, 2014): the ELBO with the reparameterisation trick.

The encoder outputs the mean and log-variance of q(z|x) (2Z numbers); the decoder the
logits of a Bernoulli p(x|z) per pixel; the prior is N(0, I). For an image x in [0, 1]

  ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || N(0, I))   (nats; a lower bound on log p(x)),

estimated with one z = mean + exp(logvar / 2) * eps, eps ~ N(0, I). In training eps comes
from the random stream "latent", which the step feeds from `fold_in(state.rng, step)`; in
evaluation from a fixed key (`VAE.eval_seed`), so evaluations are repeatable. A VAE is an
ordinary model with an objective that reads no label, trained as a `dl.task`:

  module = vae.VAE(*networks.encoder_decoder("conv", (28, 28, 1), 2 * 16, 32))
  task = dl.task(model=dl.Linen(module, rng_streams=(vae.LATENT,)),
                 objective=vae.objective, optimizer=optax.adam(1e-3), train={"input": x})
  state, history = dl.fit(task, workdir, num_steps=2000, batch_size=64)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dl.core import objectives

LATENT = "latent"  # The random stream of the reparameterisation noise.


class VAE(nn.Module):
  """An encoder to 2Z numbers (mean, log-variance) and a decoder from Z to pixel logits.

  Attributes:
    encoder: (B, H, W, C) -> (B, 2Z).
    decoder: (B, Z) -> (B, H, W, C) logits.
    eval_seed: the key of the noise when not training.
  """

  encoder: nn.Module
  decoder: nn.Module
  eval_seed: int = 0

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False):
    """(logits (B, H, W, C), mean (B, Z), logvar (B, Z)) with one z drawn per image."""
    mean_BxZ, logvar_BxZ = self.encode(x_BxHxWxC)
    if train and not self.has_rng(LATENT):
      raise ValueError(
        f"a training VAE draws its noise from the random stream {LATENT!r}; wrap it as "
        f"dl.Linen(vae, rng_streams=({LATENT!r},))."
      )
    rng = self.make_rng(LATENT) if train else jax.random.PRNGKey(self.eval_seed)
    return self.decoder(reparameterize(rng, mean_BxZ, logvar_BxZ)), mean_BxZ, logvar_BxZ

  def encode(self, x_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The posterior's (B, Z) means and (B, Z) log-variances for a batch of images."""
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


def elbo_terms(outputs, x_BxHxWxC: jax.Array) -> dict[str, jax.Array]:
  """Per-example (B,) "elbo", "reconstruction" (-log p(x|z)) and "kl", in nats.

  Args:
    outputs: what `VAE.__call__` returns, (logits, mean, logvar).
    x_BxHxWxC: the images encoded, in [0, 1].
  """
  logits, mean_BxZ, logvar_BxZ = outputs
  bce = optax.sigmoid_binary_cross_entropy(logits, x_BxHxWxC)
  reconstruction_B = bce.sum(axis=tuple(range(1, bce.ndim)))
  kl_B = kl_to_standard_normal(mean_BxZ, logvar_BxZ)
  return {"elbo": -(reconstruction_B + kl_B), "reconstruction": reconstruction_B, "kl": kl_B}


def _negative_elbo(outputs, batch):
  """The loss of each example: -ELBO of batch["input"] (B,), with the ELBO's terms."""
  terms = elbo_terms(outputs, batch["input"])
  return -terms["elbo"], terms


objective = objectives.Objective(
  _negative_elbo,
  metrics=("elbo", "reconstruction", "kl"),
  lower_is_better=frozenset({"reconstruction", "kl"}),
)
"""The negative ELBO per example (nats), with "elbo", "reconstruction" and "kl"; no label."""


def interpolate(
  model: nn.Module, params, x_a: jax.Array, x_b: jax.Array, num_steps: int = 8
) -> jax.Array:
  """Decodes `num_steps` points on the line between the posterior means of two images.

  Args:
    x_a: (P, H, W, C) the first image of each pair.
    x_b: (P, H, W, C) the second image of each pair.

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
