"""dl.generative: GAN networks and step, exact GAN resume, Frechet distance, VAE, anomaly scores."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dl
from dl.generative import (
  anomaly,
  autoencoder,
  cyclegan,
  dcgan,
  frechet,
  gan,
  gan_train,
  networks,
  vae,
)


def _tiny_gan(spectral_norm=False, num_classes=3):
  generator = dcgan.Generator((8, 8, 1), num_classes=num_classes, width=4)
  discriminator = dcgan.Discriminator(num_classes=num_classes, width=4, spectral_norm=spectral_norm)
  tx = optax.adam(1e-3, b1=0.5)
  state = gan.create_state(
    generator, discriminator, tx, tx, jax.random.PRNGKey(0), image_shape=(8, 8, 1), latent_dim=4
  )
  step = functools.partial(
    gan.train_step,
    generator=generator,
    discriminator=discriminator,
    gen_tx=tx,
    disc_tx=tx,
    latent_dim=4,
  )
  return generator, discriminator, state, step


def _batch(n=6):
  x = jnp.sin(jnp.arange(n * 64, dtype=jnp.float32)).reshape((n, 8, 8, 1))
  return {"input": x, "label": jnp.arange(n, dtype=jnp.int32) % 3}


def test_generator_and_discriminator_shapes():
  gen = dcgan.Generator((28, 28, 1), num_classes=10, width=4)
  z, y = jnp.ones((5, 16)), jnp.arange(5)
  params = gen.init(jax.random.PRNGKey(0), z, y)
  x = gen.apply(params, z, y)
  assert x.shape == (5, 28, 28, 1)
  assert float(jnp.max(jnp.abs(x))) <= 1.0
  disc = dcgan.Discriminator(num_classes=10, width=4, spectral_norm=True)
  variables = disc.init(jax.random.PRNGKey(1), x, y)
  assert set(variables) == {"params", "batch_stats"}  # the power-iteration vectors
  assert disc.apply(variables, x, y).shape == (5,)
  with pytest.raises(ValueError, match="needs labels_B"):
    gen.apply(params, z)
  with pytest.raises(ValueError, match="divisible by 4"):
    dcgan.Generator((10, 10, 1)).init(jax.random.PRNGKey(0), z)


def test_golden_gan_step():
  """One conditional step from a fixed init and batch; numbers recorded once (jax 0.10.2, CPU)."""
  _, _, state, step = _tiny_gan()
  new_state, metrics = jax.jit(step)(state, _batch())
  got = {k: float(v) for k, v in metrics.items()}
  got["gen_param_sum"] = float(sum(jnp.sum(p) for p in jax.tree.leaves(new_state.gen_params)))
  got["disc_param_sum"] = float(sum(jnp.sum(p) for p in jax.tree.leaves(new_state.disc_params)))
  expected = GOLDEN
  for k, v in expected.items():
    assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
  assert int(new_state.step) == 1


GOLDEN = {
  "disc_loss": 1.416609764099121,
  "gen_loss": 0.7085405588150024,
  "real_prob": 0.49576663970947266,
  "fake_prob": 0.49807631969451904,
  "gen_param_sum": -14.40169906616211,
  "disc_param_sum": -1.3533718585968018,
}


def _arrays(n=32):
  rng = np.random.default_rng(0)
  return {
    "input": rng.uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32),
    "label": (np.arange(n) % 3).astype(np.int32),
  }


def test_gan_resume_is_exact(tmp_path):
  """k steps, stop, resume to N == N steps straight: both nets, both optimizers, rng, data."""
  config = gan_train.GANConfig(
    latent_dim=4,
    width=4,
    spectral_norm=True,
    r1_weight=1.0,
    batch_size=8,
    num_steps=7,
    checkpoint_every=2,
  )
  arrays = _arrays()  # 4 batches per epoch: the run crosses epochs
  full = gan_train.train_gan(config, arrays, str(tmp_path / "full"), num_classes=3)
  gan_train.train_gan(
    dataclasses.replace(config, num_steps=4), arrays, str(tmp_path / "cut"), num_classes=3
  )
  resumed = gan_train.train_gan(config, arrays, str(tmp_path / "cut"), num_classes=3)
  assert int(resumed.step) == 7
  chex.assert_trees_all_equal(full, resumed)
  _, restored = gan_train.restore_gan(config, (8, 8, 1), 3, str(tmp_path / "cut"), step=6)
  assert int(restored.step) == 6
  assert (tmp_path / "full" / "samples_000007.png").exists()
  history = dl.read_history(str(tmp_path / "cut" / "metrics.jsonl"))
  assert [r["step"] for r in history["train"]] == [2, 4, 6, 7]
  assert all(r["r1"] > 0 for r in history["train"])
  # Both networks moved, and spectral norm's power-iteration vectors were updated.
  init = gan_train.build_gan(config, (8, 8, 1), 3).init_state()
  for tree in ("gen_params", "disc_params", "disc_state", "gen_opt_state", "disc_opt_state"):
    moved = jax.tree.map(
      lambda a, b: bool(np.any(a != b)), getattr(init, tree), getattr(full, tree)
    )
    assert any(jax.tree.leaves(moved)), tree


def test_frechet_distance_is_zero_for_a_set_and_grows_with_a_shift():
  x = np.random.default_rng(0).normal(size=(400, 8))
  assert frechet.set_distance(x, x) == pytest.approx(0.0, abs=1e-6)
  distances = [frechet.set_distance(x, x + shift) for shift in (0.1, 0.5, 1.0, 2.0)]
  # Same covariance: FD = ||shift * 1||^2 = 8 shift^2.
  np.testing.assert_allclose(distances, [8 * s**2 for s in (0.1, 0.5, 1.0, 2.0)], rtol=1e-4)
  assert frechet.set_distance(x, 2.0 * x) > 1.0  # scale changes the covariance term
  with pytest.raises(ValueError, match="one size"):
    frechet.distance(*frechet.statistics(x), *frechet.statistics(x[:, :4]))


def test_features_of_a_classifier_layer_and_conditional_accuracy():
  model = dl.models.create("cnn", num_classes=3, features=4, hidden=8)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(10, 8, 8, 1)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  assert frechet.features(model, variables, np.asarray(x), layer="Dense_0", batch_size=4).shape == (
    10,
    8,
  )
  logits = model.apply(variables, x)
  predicted = np.asarray(jnp.argmax(logits, -1))
  assert frechet.conditional_accuracy(model, variables, np.asarray(x), predicted) == 1.0
  assert frechet.conditional_accuracy(model, variables, np.asarray(x), (predicted + 1) % 3) == 0.0
  with pytest.raises(ValueError, match="one of the model's submodules"):
    frechet.features(model, variables, np.asarray(x), layer="Dense_7")


def test_vae_elbo_sanity():
  model = vae.VAE(*networks.encoder_decoder("conv", (8, 8, 1), 2 * 2, 4))
  tx = optax.adam(1e-2)
  state = vae.create_state(model, tx, jax.random.PRNGKey(0), (8, 8, 1))
  x = (_batch(16)["input"] + 1) / 2
  rng = jax.random.PRNGKey(3)
  terms = vae.elbo(model, state.params, x, rng)
  np.testing.assert_allclose(terms["elbo"], -(terms["reconstruction"] + terms["kl"]), rtol=1e-6)
  assert bool(jnp.all(terms["kl"] >= 0))
  # The rng is explicit: the same key, the same estimate; another key, another one.
  np.testing.assert_array_equal(vae.elbo(model, state.params, x, rng)["elbo"], terms["elbo"])
  assert not np.allclose(
    vae.elbo(model, state.params, x, jax.random.PRNGKey(4))["elbo"], terms["elbo"]
  )
  assert float(vae.kl_to_standard_normal(jnp.zeros((1, 3)), jnp.zeros((1, 3)))[0]) == 0.0
  before = vae.evaluate(model, state.params, np.asarray(x), rng)["elbo"]
  step = jax.jit(functools.partial(vae.train_step, model=model, tx=tx))
  for _ in range(30):
    state, metrics = step(state, {"input": x})
  after = vae.evaluate(model, state.params, np.asarray(x), rng)["elbo"]
  assert after > before + 1.0
  assert vae.interpolate(model, state.params, x[:2], x[2:4], num_steps=5).shape == (2, 5, 8, 8, 1)


def test_reparameterize_has_the_right_moments():
  mean, logvar = jnp.array([[1.0, -2.0]]), jnp.log(jnp.array([[4.0, 0.25]]))
  z = jax.vmap(lambda k: vae.reparameterize(k, mean, logvar))(
    jax.random.split(jax.random.PRNGKey(0), 20000)
  )
  np.testing.assert_allclose(z.mean(axis=(0, 1)), [1.0, -2.0], atol=0.05)
  np.testing.assert_allclose(z.std(axis=(0, 1)), [2.0, 0.5], rtol=0.03)


def test_autoencoder_scores_and_detection_metrics():
  model = autoencoder.Autoencoder(*networks.encoder_decoder("dense", (8, 8, 1), 2, 8))
  tx = optax.adam(1e-2)
  state = autoencoder.create_state(model, tx, jax.random.PRNGKey(0), (8, 8, 1))
  x = np.asarray((_batch(16)["input"] + 1) / 2)
  scores = autoencoder.reconstruction_error(model, state.params, x, batch_size=5)
  assert scores.shape == (16,) and np.all(scores >= 0)
  labels = np.array([0] * 14 + [1] * 2)
  assert anomaly.detection_metrics(np.arange(16.0), labels) == {
    "roc_auc": 1.0,
    "pr_auc": 1.0,
    "positive_rate": 0.125,
  }
  assert anomaly.detection_metrics(-np.arange(16.0), labels)["roc_auc"] == 0.0
  with pytest.raises(ValueError, match="both anomalies"):
    anomaly.detection_metrics(np.arange(4.0), np.zeros(4))


def test_cyclegan_step_updates_all_four_networks():
  translator, disc = cyclegan.Translator(width=4, depth=1), dcgan.Discriminator(width=4)
  tx = optax.adam(1e-3)
  state = cyclegan.create_state(
    translator, disc, tx, tx, jax.random.PRNGKey(0), image_shape=(8, 8, 1)
  )
  batch = {"a": _batch(4)["input"], "b": -_batch(6)["input"]}
  step = functools.partial(
    cyclegan.train_step, translator=translator, discriminator=disc, gen_tx=tx, disc_tx=tx
  )
  new_state, metrics = jax.jit(step)(state, batch)
  assert set(new_state.gen_params) == {"a_to_b", "b_to_a"} and set(new_state.disc_params) == {
    "a",
    "b",
  }
  for tree in ("gen_params", "disc_params"):
    for name, params in getattr(new_state, tree).items():
      old = getattr(state, tree)[name]
      assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old, params))), (
        name
      )
  assert float(metrics["cycle_loss"]) > 0
