"""dl.generative: GAN networks and step, GANs, VAEs, autoencoders and CycleGANs through dl.fit
(exact resume, also after kill -9; a mesh), Frechet distance, anomaly scores."""

import functools
import importlib.util
import os
import sys

import chex
import jax
import jax.numpy as jnp
import kill
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
from dl.training import loop

QUIET = {"progress": False, "tensorboard": False}


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


def _arrays(n=32):
  rng = np.random.default_rng(0)
  return {
    "input": rng.uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32),
    "label": (np.arange(n) % 3).astype(np.int32),
  }


def _moved(before, after) -> bool:
  return any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)))


def test_generator_and_discriminator_shapes():
  """Shapes and errors at trace time (`jax.eval_shape`: nothing is computed)."""
  gen = dcgan.Generator((28, 28, 1), num_classes=10, width=4)
  z, y = jnp.ones((5, 16)), jnp.arange(5)
  params = jax.eval_shape(gen.init, jax.random.PRNGKey(0), z, y)
  x = jax.eval_shape(gen.apply, params, z, y)
  assert x.shape == (5, 28, 28, 1)
  disc = dcgan.Discriminator(num_classes=10, width=4, spectral_norm=True)
  variables = jax.eval_shape(disc.init, jax.random.PRNGKey(1), x, y)
  assert set(variables) == {"params", "batch_stats"}  # the power-iteration vectors
  assert jax.eval_shape(disc.apply, variables, x, y).shape == (5,)
  with pytest.raises(ValueError, match="needs labels_B"):
    jax.eval_shape(gen.apply, params, z)
  with pytest.raises(ValueError, match="divisible by 4"):
    jax.eval_shape(dcgan.Generator((10, 10, 1)).init, jax.random.PRNGKey(0), z)


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


def _gan_part(config=gan_train.GANConfig(latent_dim=4, width=4), **kwargs) -> gan_train.GAN:
  return gan_train.build_gan(config, _arrays(), num_classes=3, **kwargs)


def test_gan_through_fit_scores_draws_samples_resumes_and_runs_on_a_mesh(tmp_path):
  """4 steps, stop, resume to 7: records continue, a grid per evaluation; the same 7 steps
  on a data-parallel mesh of 8 devices (the loop lays out the same pure step) agree."""

  def score(model, state):
    z, labels = model.fixed_noise(2)
    return {"sample_mean": float(jnp.mean(model.sample(state, z, labels)))}

  model = _gan_part(score=score)
  config = dl.FitConfig(num_steps=7, batch_size=8, eval_every=2, log_every=2, **QUIET)
  cut = str(tmp_path / "cut")
  dl.fit(model, cut, config, num_steps=4, hooks=[gan_train.SampleGrid(model, cut, per_class=2)])
  # 4 batches per epoch: the resumed run crosses into the second epoch.
  resumed, history = dl.fit(model, cut, config, hooks=[gan_train.SampleGrid(model, cut)])
  assert int(resumed.step) == 7
  assert [r["step"] for r in history["train"]] == [2, 4, 6, 7]
  assert [r["step"] for r in history["eval"]] == [2, 4, 6, 7]
  assert all(np.isfinite(r["sample_mean"]) for r in history["eval"])
  pngs = sorted(p for p in os.listdir(cut) if p.startswith("samples_"))
  assert pngs == [f"samples_{s:06d}.png" for s in (2, 4, 6, 7)]
  restored = loop.restore(model, cut, step=6)
  assert int(restored.step) == 6
  init = model.init(0)
  for tree in ("gen_params", "disc_params", "gen_opt_state", "disc_opt_state"):
    assert _moved(getattr(init, tree), getattr(resumed, tree)), tree
  on_mesh, _ = dl.fit(model, str(tmp_path / "mesh"), config, parallel="data")
  assert {d for x in jax.tree.leaves(on_mesh.gen_params) for d in x.devices()} == set(jax.devices())
  chex.assert_trees_all_close(resumed, on_mesh, rtol=1e-4, atol=1e-5)


def test_gan_step_under_pmap(tmp_path):
  """pmap: each device draws its own noise; gradients, metrics and spectral norm's
  power-iteration state are averaged over devices."""
  config = gan_train.GANConfig(latent_dim=4, width=4, spectral_norm=True, r1_weight=1.0)
  model = _gan_part(config)
  state, history = dl.fit(model, str(tmp_path), num_steps=1, batch_size=8, parallel="pmap", **QUIET)
  assert int(state.step) == 1 and history["train"][-1]["r1"] > 0
  init = model.init(0)
  for tree in ("gen_params", "disc_params", "disc_state"):
    assert _moved(getattr(init, tree), getattr(state, tree)), tree


GAN_SCRIPT = """
import sys

import numpy as np

import dl
from dl.generative import gan_train

CONFIG = dl.FitConfig(
  num_steps=300, batch_size=8, eval_every=300, checkpoint_every=25, progress=False,
  tensorboard=False,
)


def build():
  rng = np.random.default_rng(0)
  arrays = {
    "input": rng.uniform(-1, 1, (40, 8, 8, 1)).astype(np.float32),
    "label": (np.arange(40) % 3).astype(np.int32),
  }
  # Spectral norm: the discriminator's power-iteration state must resume too.
  config = gan_train.GANConfig(latent_dim=4, width=4, spectral_norm=True)
  return gan_train.build_gan(config, arrays, num_classes=3)


if __name__ == "__main__":
  dl.fit(build(), sys.argv[1], CONFIG)
"""


def test_gan_exact_resume_after_process_kill(tmp_path):
  """SIGKILL a GAN run after a checkpoint, rerun, and end bit-identical to an uninterrupted run."""
  script = tmp_path / "train_gan.py"
  script.write_text(GAN_SCRIPT)
  spec = importlib.util.spec_from_file_location("train_gan", script)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  killed = tmp_path / "killed"
  model = module.build()
  resume = functools.partial(dl.fit, model, str(killed), module.CONFIG)  # the script's own call
  command = [sys.executable, str(script), str(killed)]
  assert kill.kill_then_rerun(command, killed, 50, resume=resume) < 300
  full, _ = dl.fit(model, str(tmp_path / "full"), module.CONFIG)
  resumed = loop.restore(model, str(killed), module.CONFIG)
  assert int(resumed.step) == 300
  chex.assert_trees_all_equal(full, resumed)


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
  features = frechet.features(model, variables, np.asarray(x), layer="Dense_0", batch_size=4)
  assert features.shape == (10, 8)
  # A task's dl.Linen model works as well as the bare module. The same batches: XLA may round
  # a batch of 2 apart from a batch of 10 in the last bit.
  np.testing.assert_array_equal(
    frechet.features(dl.Linen(model), variables, np.asarray(x), layer="Dense_0", batch_size=4),
    features,
  )
  np.testing.assert_allclose(
    frechet.features(model, variables, np.asarray(x), layer="Dense_0"), features, rtol=1e-5
  )
  logits = model.apply(variables, x)
  predicted = np.asarray(jnp.argmax(logits, -1))
  assert frechet.conditional_accuracy(model, variables, np.asarray(x), predicted) == 1.0
  assert frechet.conditional_accuracy(model, variables, np.asarray(x), (predicted + 1) % 3) == 0.0
  with pytest.raises(ValueError, match="one of the model's submodules"):
    frechet.features(model, variables, np.asarray(x), layer="Dense_7")


def _images(n=16):
  return np.asarray((_batch(n)["input"] + 1) / 2)  # [0, 1]


def test_vae_objective_draws_from_the_latent_stream():
  module = vae.VAE(*networks.encoder_decoder("conv", (8, 8, 1), 2 * 2, 4))
  x = _images()
  params = module.init({"params": jax.random.PRNGKey(0)}, x)["params"]

  def terms(key, train=True):
    outputs = module.apply({"params": params}, x, train=train, rngs={vae.LATENT: key})
    loss_B, metrics = vae.objective(outputs, {"input": x})
    return loss_B, metrics

  loss_B, metrics = terms(jax.random.PRNGKey(3))
  np.testing.assert_allclose(
    metrics["elbo"], -(metrics["reconstruction"] + metrics["kl"]), rtol=1e-6
  )
  np.testing.assert_array_equal(loss_B, -metrics["elbo"])
  assert bool(jnp.all(metrics["kl"] >= 0))
  # The same key, the same estimate; another key, another one; evaluation: a fixed key.
  np.testing.assert_array_equal(terms(jax.random.PRNGKey(3))[0], loss_B)
  assert not np.allclose(terms(jax.random.PRNGKey(4))[0], loss_B)
  np.testing.assert_array_equal(
    terms(jax.random.PRNGKey(4), train=False)[0], terms(jax.random.PRNGKey(5), train=False)[0]
  )
  assert float(vae.kl_to_standard_normal(jnp.zeros((1, 3)), jnp.zeros((1, 3)))[0]) == 0.0
  with pytest.raises(ValueError, match="rng_streams"):
    module.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})


def test_vae_task_trains_through_fit_without_labels(tmp_path):
  """Unsupervised data ({"input"} only): validation is carved out, evaluated, and improves."""
  module = vae.VAE(*networks.encoder_decoder("dense", (8, 8, 1), 2 * 2, 16))
  task = dl.task(
    model=dl.Linen(module, rng_streams=(vae.LATENT,)),
    objective=vae.objective,
    optimizer=optax.adam(1e-2),
    train={"input": np.tile(_images(), (4, 1, 1, 1))},  # 64 images, 6 held out
  )
  assert task.selection == ("loss", "min")
  state, history = dl.fit(task, str(tmp_path), num_steps=40, batch_size=8, eval_every=20, **QUIET)
  first, last = history["eval"][0], history["eval"][-1]
  assert set(last) >= {"loss", "elbo", "reconstruction", "kl"}
  assert last["elbo"] > first["elbo"] + 1.0
  assert task.evaluate(state)["elbo"] == task.evaluate(state)["elbo"]  # a fixed key
  x = _images(4)
  lines = vae.interpolate(module, state.params, x[:2], x[2:4], num_steps=5)
  assert lines.shape == (2, 5, 8, 8, 1)
  assert vae.sample(module, state.params, jax.random.PRNGKey(0), 3, 2).shape == (3, 8, 8, 1)


def test_reparameterize_has_the_right_moments():
  mean, logvar = jnp.array([[1.0, -2.0]]), jnp.log(jnp.array([[4.0, 0.25]]))
  z = jax.vmap(lambda k: vae.reparameterize(k, mean, logvar))(
    jax.random.split(jax.random.PRNGKey(0), 20000)
  )
  np.testing.assert_allclose(z.mean(axis=(0, 1)), [1.0, -2.0], atol=0.05)
  np.testing.assert_allclose(z.std(axis=(0, 1)), [2.0, 0.5], rtol=0.03)


def test_autoencoder_task_scores_and_detection_metrics(tmp_path):
  module = autoencoder.Autoencoder(*networks.encoder_decoder("dense", (8, 8, 1), 2, 8))
  x = _images()
  task = dl.task(
    model=dl.Linen(module, train_arg=None),
    objective=autoencoder.objective,
    optimizer=optax.adam(1e-2),
    train={"input": x},
    validation_fraction=0.25,
  )
  state, history = dl.fit(task, str(tmp_path), num_steps=6, batch_size=4, eval_every=3, **QUIET)
  assert [r["step"] for r in history["eval"]] == [3, 6]
  scores = autoencoder.reconstruction_error(task, state, x, batch_size=5)
  assert scores.shape == (16,) and np.all(scores >= 0)
  recon = module.apply({"params": state.params}, x)
  np.testing.assert_allclose(scores, np.mean((recon - x) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  labels = np.array([0] * 14 + [1] * 2)
  assert anomaly.detection_metrics(np.arange(16.0), labels) == {
    "roc_auc": 1.0,
    "pr_auc": 1.0,
    "positive_rate": 0.125,
  }
  assert anomaly.detection_metrics(-np.arange(16.0), labels)["roc_auc"] == 0.0
  with pytest.raises(ValueError, match="both anomalies"):
    anomaly.detection_metrics(np.arange(4.0), np.zeros(4))


def _cyclegan(**kwargs) -> cyclegan.CycleGAN:
  tx = optax.adam(1e-3)
  a, b = _arrays(24)["input"], -_arrays(16)["input"]
  return cyclegan.CycleGAN(
    cyclegan.Translator(width=4, depth=1),
    dcgan.Discriminator(width=4),
    tx,
    tx,
    train={"a": a, "b": b},
    **kwargs,
  )


def test_cyclegan_step_updates_all_four_networks():
  cycle = _cyclegan()
  state = cycle.init(0)
  batch = {"a": _batch(4)["input"], "b": -_batch(4)["input"]}
  new_state, metrics = jax.jit(cycle.step)(state, batch)
  assert set(new_state.gen_params) == {"a_to_b", "b_to_a"}
  assert set(new_state.disc_params) == {"a", "b"}
  for tree in ("gen_params", "disc_params"):
    for name, params in getattr(new_state, tree).items():
      assert _moved(getattr(state, tree)[name], params), name
  assert float(metrics["cycle_loss"]) > 0


def test_cyclegan_through_fit_resumes_exactly_with_zipped_batches(tmp_path):
  """Both domains' stream positions are checkpointed: 2 + 2 fused steps == 4 straight."""
  held_out = {"a": _arrays(5)["input"], "b": _arrays(7)["input"]}
  cycle = _cyclegan(test=held_out)
  config = dl.FitConfig(num_steps=4, batch_size=8, steps_per_dispatch=2, eval_every=2, **QUIET)
  full, _ = dl.fit(cycle, str(tmp_path / "full"), config)
  dl.fit(cycle, str(tmp_path / "cut"), config, num_steps=2)
  resumed, history = dl.fit(cycle, str(tmp_path / "cut"), config)
  chex.assert_trees_all_equal(full, resumed)
  test = history["test"][-1]
  assert test["cycle_loss"] == pytest.approx(test["cycle_a"] + test["cycle_b"])
  batches = cycle.batches(8, seed=0)
  assert batches.steps_per_epoch == 3  # of the longer domain
  assert {k: v.shape for k, v in batches.next(2).items()} == {
    "a": (2, 8, 8, 8, 1),
    "b": (2, 8, 8, 8, 1),
  }
  with pytest.raises(ValueError, match="both domains"):
    _cyclegan(eval={"a": held_out["a"]})
