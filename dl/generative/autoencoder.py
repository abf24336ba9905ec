"""Autoencoders: an encoder to a bottleneck, a decoder back; trained on reconstruction error.

  model = autoencoder.Autoencoder(*networks.encoder_decoder("dense", (28, 28, 1), 16, 128))
  state = autoencoder.create_state(model, optax.adam(1e-3), key, (28, 28, 1))
  state, metrics = jax.jit(functools.partial(autoencoder.train_step, model=model, tx=tx))(
      state, {"input": x_BxHxWxC})
  scores_N = autoencoder.reconstruction_error(model, state.params, x_NxHxWxC)

Inputs are images in [0, 1]; the decoder's logits pass through a sigmoid.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl.training.state import TrainState


class Autoencoder(nn.Module):
  """`decoder(encoder(x))`, with a sigmoid on the decoder's logits."""

  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """Reconstructions (B, H, W, C) in [0, 1]."""
    return jax.nn.sigmoid(self.decoder(self.encoder(x_BxHxWxC)))

  def encode(self, x_BxHxWxC: jax.Array) -> jax.Array:
    return self.encoder(x_BxHxWxC)

  def decode(self, z_BxZ: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(self.decoder(z_BxZ))


def create_state(
  model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, ...]
) -> TrainState:
  """A `dl.TrainState` (step 0) for an autoencoder on images of `image_shape`."""
  init_rng, rng = jax.random.split(rng)
  params = model.init(init_rng, jnp.zeros((1, *image_shape)))["params"]
  return TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), rng)


def squared_error(model: nn.Module, params, x_BxHxWxC: jax.Array) -> jax.Array:
  """Per-example mean squared reconstruction error (B,)."""
  recon = model.apply({"params": params}, x_BxHxWxC)
  return optax.squared_error(recon, x_BxHxWxC).mean(axis=tuple(range(1, x_BxHxWxC.ndim)))


def train_step(
  state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, tx
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the batch's mean squared reconstruction error ("input" only)."""
  loss, grads = jax.value_and_grad(lambda p: squared_error(model, p, batch["input"]).mean())(
    state.params
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  )
  return new_state, {"loss": loss}


def reconstruction_error(
  model: nn.Module, params, x_NxHxWxC: np.ndarray, *, batch_size: int = 1000
) -> np.ndarray:
  """Per-example mean squared reconstruction error (N,): an anomaly score."""
  fn = _jitted_error(model)
  return np.concatenate(
    [
      np.asarray(fn(params, x_NxHxWxC[i : i + batch_size]))
      for i in range(0, len(x_NxHxWxC), batch_size)
    ]
  )


@functools.cache
def _jitted_error(model: nn.Module):
  return jax.jit(functools.partial(squared_error, model))
