"""Autoencoders: an encoder to a bottleneck, a decoder back; trained on reconstruction error.

An autoencoder is an ordinary model with an objective that reads no label, so it trains as a
`dl.task` through `dl.fit`:

  module = autoencoder.Autoencoder(*networks.encoder_decoder("dense", (28, 28, 1), 16, 128))
  task = dl.task(model=dl.Linen(module, train_arg=None), objective=autoencoder.objective,
                 optimizer=optax.adam(1e-3), train={"input": x_NxHxWxC})
  state, history = dl.fit(task, workdir, num_steps=1500, batch_size=64)
  scores_N = autoencoder.reconstruction_error(task, state, x_NxHxWxC)

Inputs are images in [0, 1]; the decoder's logits pass through a sigmoid.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl import inference
from dl.core import objectives


class Autoencoder(nn.Module):
  """`decoder(encoder(x))`, with a sigmoid on the decoder's logits."""

  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """Reconstructions (B, H, W, C) in [0, 1]."""
    return jax.nn.sigmoid(self.decoder(self.encoder(x_BxHxWxC)))

  def encode(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """The (B, Z) codes of a batch of images."""
    return self.encoder(x_BxHxWxC)

  def decode(self, z_BxZ: jax.Array) -> jax.Array:
    """The (B, H, W, C) images in [0, 1] that codes decode to."""
    return jax.nn.sigmoid(self.decoder(z_BxZ))


def squared_error(reconstructions: jax.Array, x: jax.Array) -> jax.Array:
  """Per-example mean squared error (B,) over all non-batch axes."""
  return jnp.mean(optax.squared_error(reconstructions, x), axis=tuple(range(1, x.ndim)))


def _reconstruction(reconstructions, batch):
  """The loss of each example: its mean squared reconstruction error of batch["input"]."""
  return squared_error(reconstructions, batch["input"]), {}


objective = objectives.Objective(_reconstruction)
"""Mean squared reconstruction error of batch["input"] per example; reads no label."""


def reconstruction_error(
  task, state, x_NxHxWxC: np.ndarray, *, batch_size: int = inference.EVAL_BATCH_SIZE
) -> np.ndarray:
  """Per-example mean squared reconstruction error (N,): an anomaly score.

  Args:
    task: the autoencoder's `dl.Task` (its model reads "input" alone).
    state: a trained state of it (e.g. from `dl.fit`).
    x_NxHxWxC: raw images, as the task takes them (`task.inputs`).
    batch_size: images per compiled call.
  """
  scores = []
  for i in range(0, len(x_NxHxWxC), batch_size):
    raw = x_NxHxWxC[i : i + batch_size]
    x = inference.prepare_inputs(task, raw)["input"]  # What the model saw: preprocessed.
    scores.append(np.asarray(squared_error(inference.predict(task, state, raw), x)))
  return np.concatenate(scores)
