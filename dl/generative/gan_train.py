"""A DCGAN as a part of the one loop: `dl.fit(gan_train.build_gan(...), workdir)`.

  gan = gan_train.build_gan(GANConfig(), {"input": x_NxHxWxC, "label": y_N}, num_classes=10)
  state, history = dl.fit(gan, workdir, num_steps=1500, batch_size=64, eval_every=250,
                          hooks=[gan_train.SampleGrid(gan, workdir)])
  state = dl.restore(gan, workdir, step=None)          # the newest checkpoint

`GAN` is a `dl.training.protocols.Trainable`: its state is a `gan.GANState` (both networks, both
optimizer states, the key) and its step is `gan.train_step`, so `dl.fit` gives it what any
part gets: exact resume (state and data position in every checkpoint), `metrics.jsonl`, the
progress bar, fused steps and the compile modes (jit, pmap, a mesh). Its evaluation is the
`score` passed in (e.g. a Frechet distance, `frechet`); `SampleGrid` writes
`samples_<step>.png`, a grid of the same noise at every evaluation (one row per class for a
conditional GAN).
"""

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl import inference
from dl.core import distributed, parallel
from dl.data import sources
from dl.data.batches import ShuffledBatches
from dl.generative import dcgan, gan, images
from dl.training.protocols import Hook

Metrics = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GANConfig:
  """The DCGAN pair and its two optimizers (how long and how it trains is `dl.FitConfig`'s).

  Attributes:
    latent_dim: Z, the size of the noise vector.
    width: channels of the networks (see `dcgan.Generator` and `dcgan.Discriminator`).
    conditional: class-conditional generator and projection discriminator.
    spectral_norm: spectral normalisation in the discriminator.
    r1_weight: gamma of the R1 gradient penalty (0 disables it).
    learning_rate, b1: Adam's, for both networks (DCGAN: 2e-4, 0.5).
  """

  latent_dim: int = 64
  width: int = 32
  conditional: bool = True
  spectral_norm: bool = False
  r1_weight: float = 0.0
  learning_rate: float = 2e-4
  b1: float = 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class GAN:
  """A DCGAN and its training images, as a `dl.training.protocols.Trainable` (see `build_gan`).

  Attributes:
    config: what built the networks and optimizers.
    image_shape: (H, W, C) of one image.
    num_classes: classes the networks are conditioned on (0: unconditional).
    generator, discriminator: the two Flax modules.
    gen_tx, disc_tx: their optimizers.
    train: the real images {"input": (N, H, W, C) in [-1, 1], "label": (N,)}.
    score: `(gan, state) -> {name: float}`, the "eval" metrics (e.g. a Frechet distance);
      None: evaluations record nothing but still run the hooks (e.g. `SampleGrid`).
    selection: (score metric, "min" or "max") that picks the best checkpoint, or None.
    name: shown on the progress bar and the plot.
  """

  config: GANConfig
  image_shape: tuple[int, int, int]
  num_classes: int
  generator: dcgan.Generator
  discriminator: dcgan.Discriminator
  gen_tx: optax.GradientTransformation
  disc_tx: optax.GradientTransformation
  train: sources.InMemory
  score: Callable[["GAN", gan.GANState], Metrics] | None = None
  selection: tuple[str, str] | None = None
  name: str = "dcgan"

  def init(self, seed: int) -> gan.GANState:
    """Both networks and both optimizers, initialised from `seed`; step 0."""
    return gan.create_state(
      self.generator,
      self.discriminator,
      self.gen_tx,
      self.disc_tx,
      jax.random.PRNGKey(seed),
      image_shape=self.image_shape,
      latent_dim=self.config.latent_dim,
    )

  def step(self, state: gan.GANState, batch, *, axis_name: str | None = None):
    """`gan.train_step` with this GAN's networks and optimizers bound."""
    return gan.train_step(
      state,
      batch,
      generator=self.generator,
      discriminator=self.discriminator,
      gen_tx=self.gen_tx,
      disc_tx=self.disc_tx,
      latent_dim=self.config.latent_dim,
      r1_weight=self.config.r1_weight,
      axis_name=axis_name,
    )

  def batches(
    self, batch_size: int, *, seed: int, shard_index: int = 0, num_shards: int = 1
  ) -> ShuffledBatches:
    """Shuffled real images (this process's share), an order seeded by `seed`."""
    return self.train.batches(batch_size, seed=seed, shard_index=shard_index, num_shards=num_shards)

  def evaluate(
    self, state: gan.GANState, split: str = "eval", batch_size: int = inference.EVAL_BATCH_SIZE
  ) -> Metrics | None:
    """`score(self, state)` for "eval" ({} without a score); None for "test" (no test data)."""
    del batch_size  # The score decides how many images it generates.
    if split != "eval":
      return None
    return dict(self.score(self, state)) if self.score is not None else {}

  def sample(
    self, state: gan.GANState, z_BxZ: jax.Array, labels_B: jax.Array | None = None
  ) -> jax.Array:
    """Images (B, H, W, C) in [-1, 1]; `labels_B` is ignored by unconditional models."""
    labels_B = labels_B if self.num_classes else None
    return _jitted_generate(self.generator)(state.gen_params, z_BxZ, labels_B)

  def fixed_noise(self, per_class: int = 8, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    """The same noise at every call: `per_class` draws for every class, and their labels."""
    num_classes = max(self.num_classes, 1)
    z = jax.random.normal(
      jax.random.PRNGKey(seed), (num_classes * per_class, self.config.latent_dim)
    )
    return z, jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)


@functools.cache
def _jitted_generate(generator: dcgan.Generator):
  return jax.jit(functools.partial(gan.generate, generator))


def build_gan(
  config: GANConfig,
  arrays: Mapping[str, np.ndarray],
  *,
  num_classes: int,
  score: Callable[[GAN, gan.GANState], Metrics] | None = None,
  selection: tuple[str, str] | None = None,
  name: str = "dcgan",
) -> GAN:
  """The DCGAN pair and two Adam optimizers for `arrays`, ready for `dl.fit`.

  Args:
    config: the networks and optimizers.
    arrays: {"input": (N, H, W, C) float32 in [-1, 1], "label": (N,) int class ids} ("label"
      only needed when `config.conditional`).
    num_classes: classes of "label".
    score: the evaluation, `(gan, state) -> {name: float}` (see `GAN.score`).
    selection: (score metric, "min" or "max") that picks the best checkpoint.
    name: shown on the progress bar and the plot.

  Raises:
    ValueError: when `arrays` are not float32 images with one label each.
  """
  _check_arrays(arrays, config.conditional)
  image_shape = tuple(arrays["input"].shape[1:])
  classes = num_classes if config.conditional else 0
  tx = optax.adam(config.learning_rate, b1=config.b1)
  return GAN(
    config=config,
    image_shape=image_shape,
    num_classes=classes,
    generator=dcgan.Generator(image_shape, num_classes=classes, width=config.width),
    discriminator=dcgan.Discriminator(
      num_classes=classes, width=config.width, spectral_norm=config.spectral_norm
    ),
    gen_tx=tx,
    disc_tx=tx,
    train=sources.InMemory(arrays),
    score=score,
    selection=selection,
    name=name,
  )


class SampleGrid(Hook):
  """Writes `<workdir>/samples_<step>.png` at every evaluation: the same noise each time."""

  def __init__(self, model: GAN, workdir: str, *, per_class: int = 8, seed: int = 1):
    self._model, self._workdir = model, workdir
    self._per_class = per_class
    self._z, self._labels = model.fixed_noise(per_class, seed)

  def on_eval(self, state: gan.GANState, step: int, split: str) -> Metrics:
    """Saves the grid of `state`'s generator (one row per class); adds no metrics."""
    if split != "eval":
      return {}
    x = parallel.fetch(self._model.sample(state, self._z, self._labels))  # every process calls
    if distributed.is_primary():
      images.save_grid(
        os.path.join(self._workdir, f"samples_{step:06d}.png"),
        x,
        num_cols=self._per_class,
        value_range=(-1.0, 1.0),
        row_labels=[str(c) for c in range(self._model.num_classes)] or None,
        title=f"step {step}",
      )
    return {}


def _check_arrays(arrays: Mapping[str, np.ndarray], conditional: bool) -> None:
  x = arrays.get("input")
  if x is None or x.ndim != 4 or x.dtype != np.float32:
    got = None if x is None else f"{x.shape} {x.dtype}"
    raise ValueError(f"arrays['input'] must be float32 (N, H, W, C) in [-1, 1]; got {got}.")
  if conditional and ("label" not in arrays or np.shape(arrays["label"]) != x.shape[:1]):
    raise ValueError(
      "a conditional GAN needs arrays['label']: (N,) class ids, one per image; got "
      f"{None if 'label' not in arrays else np.shape(arrays['label'])}."
    )
