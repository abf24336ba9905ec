"""The GAN training loop: batches, checkpoints that resume exactly, sample grids.

  config = GANConfig(num_steps=1500)
  state = train_gan(config, {"input": images_NxHxWxC, "label": labels_N}, workdir, num_classes=10)

`workdir` gets `checkpoints/` (through `dl.Checkpointer`: both networks, both optimizer
states, the rng and the data position), `metrics.jsonl` and `samples_<step>.png` (a grid of
the same fixed noise at every sample step; conditional models draw one row per class).
A workdir that holds checkpoints is resumed and ends bit-identical to an uninterrupted run.
"""

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl import writers
from dl.checkpoint import Checkpointer
from dl.data.batches import ShuffledBatches
from dl.generative import dcgan, gan, images


@dataclasses.dataclass(frozen=True)
class GANConfig:
  """How a DCGAN is built and trained.

  Attributes:
    latent_dim: Z, the size of the noise vector.
    width: channels of the networks (see `dcgan.Generator` and `dcgan.Discriminator`).
    conditional: class-conditional generator and projection discriminator.
    spectral_norm: spectral normalisation in the discriminator.
    r1_weight: gamma of the R1 gradient penalty (0 disables it).
    batch_size: real images per step.
    num_steps: train steps in all.
    learning_rate, b1: Adam's, for both networks (DCGAN: 2e-4, 0.5).
    seed: initialisation, noise and data order.
    checkpoint_every: steps between checkpoints (and evaluations); the last step always.
    sample_every: steps between sample grids (0: only at checkpoints).
    keep: checkpoints kept.
  """

  latent_dim: int = 64
  width: int = 32
  conditional: bool = True
  spectral_norm: bool = False
  r1_weight: float = 0.0
  batch_size: int = 64
  num_steps: int = 1500
  learning_rate: float = 2e-4
  b1: float = 0.5
  seed: int = 0
  checkpoint_every: int = 250
  sample_every: int = 0
  keep: int = 100


@dataclasses.dataclass(frozen=True)
class GAN:
  """The networks and optimizers a `GANConfig` describes, and its jitted step."""

  config: GANConfig
  image_shape: tuple[int, int, int]
  num_classes: int
  generator: dcgan.Generator
  discriminator: dcgan.Discriminator
  gen_tx: optax.GradientTransformation
  disc_tx: optax.GradientTransformation

  def init_state(self) -> gan.GANState:
    return gan.create_state(
      self.generator,
      self.discriminator,
      self.gen_tx,
      self.disc_tx,
      jax.random.PRNGKey(self.config.seed),
      image_shape=self.image_shape,
      latent_dim=self.config.latent_dim,
    )

  def step_fn(self) -> Callable:
    """The pure step with everything but (state, batch) bound."""
    return functools.partial(
      gan.train_step,
      generator=self.generator,
      discriminator=self.discriminator,
      gen_tx=self.gen_tx,
      disc_tx=self.disc_tx,
      latent_dim=self.config.latent_dim,
      r1_weight=self.config.r1_weight,
    )

  def sample(self, state: gan.GANState, z_BxZ: jax.Array, labels_B: jax.Array | None) -> jax.Array:
    """Images (B, H, W, C) in [-1, 1]; `labels_B` is ignored by unconditional models."""
    labels_B = labels_B if self.num_classes else None
    return _jitted_generate(self.generator)(state.gen_params, z_BxZ, labels_B)

  def fixed_noise(self, per_class: int = 8) -> tuple[jax.Array, jax.Array]:
    """The noise and labels of the sample grids: `per_class` images of every class."""
    num_classes = max(self.num_classes, 1)
    key = jax.random.PRNGKey(self.config.seed + 1)
    z = jax.random.normal(key, (num_classes * per_class, self.config.latent_dim))
    return z, jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)


@functools.cache
def _jitted_generate(generator):
  return jax.jit(functools.partial(gan.generate, generator))


def build_gan(config: GANConfig, image_shape: tuple[int, int, int], num_classes: int) -> GAN:
  """The DCGAN pair and two Adam optimizers for images of `image_shape`."""
  classes = num_classes if config.conditional else 0
  tx = optax.adam(config.learning_rate, b1=config.b1)
  return GAN(
    config,
    tuple(image_shape),
    classes,
    dcgan.Generator(tuple(image_shape), num_classes=classes, width=config.width),
    dcgan.Discriminator(
      num_classes=classes, width=config.width, spectral_norm=config.spectral_norm
    ),
    tx,
    tx,
  )


def train_gan(
  config: GANConfig,
  arrays: dict[str, np.ndarray],
  workdir: str,
  *,
  num_classes: int,
  evaluate: Callable[[GAN, gan.GANState], dict[str, float]] | None = None,
) -> gan.GANState:
  """Trains a DCGAN on `arrays`, resuming from `workdir` if it holds checkpoints.

  Args:
    config: the GAN and its training.
    arrays: {"input": (N, H, W, C) float32 in [-1, 1], "label": (N,) int32}.
    workdir: checkpoints, `metrics.jsonl` and sample PNGs go here.
    num_classes: classes of "label" (for conditional models).
    evaluate: optional `(gan, state) -> {name: float}`, run at every checkpoint and
      written to `metrics.jsonl` as an "eval" record (e.g. a Frechet distance).

  Returns:
    The state after `config.num_steps` steps.
  """
  _check_arrays(arrays)
  model = build_gan(config, arrays["input"].shape[1:], num_classes)
  batches = ShuffledBatches(arrays, config.batch_size, seed=config.seed)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep)
  state = _start(model, ckpt, batches)
  writer = writers.MetricWriter(workdir, tensorboard=False)
  step_fn = jax.jit(model.step_fn(), donate_argnums=0)
  z, labels = model.fixed_noise()
  try:
    step = int(state.step)
    while step < config.num_steps:
      state, metrics = step_fn(state, batches.next())
      step += 1
      if step % config.checkpoint_every and step != config.num_steps:
        if config.sample_every and step % config.sample_every == 0:
          _save_samples(model, state, z, labels, workdir, step)
        continue
      writer.write("train", step, _finite(jax.device_get(metrics), step))
      _save_samples(model, state, z, labels, workdir, step)
      if evaluate is not None:
        writer.write("eval", step, evaluate(model, state))
      ckpt.save(step, state, batches.get_state())
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  return state


def restore_gan(
  config: GANConfig, image_shape, num_classes: int, workdir: str, step: int | None = None
) -> tuple[GAN, gan.GANState]:
  """The model and the state `train_gan` saved at `step` (default: the newest)."""
  model = build_gan(config, image_shape, num_classes)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep)
  try:
    restored = ckpt.restore(jax.eval_shape(model.init_state), step)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no GAN checkpoint in {workdir}; train it first with train_gan.")
  return model, restored[1]


def _start(model: GAN, ckpt: Checkpointer, batches: ShuffledBatches) -> gan.GANState:
  restored = ckpt.restore(jax.eval_shape(model.init_state))
  if restored is None:
    return model.init_state()
  _, state, position = restored
  batches.set_state(position)
  return state


def _save_samples(model: GAN, state, z, labels, workdir: str, step: int) -> None:
  x = np.asarray(model.sample(state, z, labels))
  per_row = len(z) // max(model.num_classes, 1)
  row_labels = [str(c) for c in range(model.num_classes)] if model.num_classes else None
  images.save_grid(
    os.path.join(workdir, f"samples_{step:06d}.png"),
    x,
    num_cols=per_row,
    value_range=(-1.0, 1.0),
    row_labels=row_labels,
    title=f"step {step}",
  )


def _finite(metrics: dict[str, Any], step: int) -> dict[str, float]:
  record = {k: float(v) for k, v in metrics.items()}
  if not all(np.isfinite(v) for v in record.values()):
    raise FloatingPointError(
      f"GAN losses are not finite at step {step}: {record}. The last checkpoint is kept; "
      "try a lower learning_rate or r1_weight > 0."
    )
  return record


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
  x = arrays.get("input")
  if x is None or x.ndim != 4 or x.dtype != np.float32:
    got = None if x is None else f"{x.shape} {x.dtype}"
    raise ValueError(f"arrays['input'] must be float32 (N, H, W, C) in [-1, 1]; got {got}.")
  if "label" not in arrays or arrays["label"].shape != x.shape[:1]:
    raise ValueError("arrays['label'] must be (N,) class ids, one per image.")
