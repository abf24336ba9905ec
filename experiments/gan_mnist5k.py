r"""Conditional DCGAN on `mnist5k` (4,000 real MNIST train digits, 28x28), scored by a dl CNN.

python experiments/gan_mnist5k.py --workdir workdirs/gan_mnist5k

Trains the mnist5k CNN with `dl.train` (the Frechet-distance feature extractor and the
judge of conditional samples), then the GAN (`dl.generative.gan_train.build_gan`) with
`dl.fit`. At every evaluation (each 250 steps) it generates 1,000 images (100 per class) and
reports the Frechet distance of their CNN features (the 256-unit hidden layer) to the 1,000
real test images', and the share the CNN labels as the class they were generated for. Writes
`gan/samples_<step>.png`, `gan/metrics.jsonl` and `results.md` in the workdir; a workdir
with checkpoints is resumed exactly. `--tiny` runs a few steps of tiny models (for tests).
"""

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

import dl
from dl.generative import datasets, frechet, gan_train

FEATURE_LAYER = "Dense_0"


def classifier_config(tiny: bool = False):
  """The CNN of `mnist5k_cnn.py` on all 4,000 train images, 8 epochs (tiny: 4 steps)."""
  config = dl.default_config()
  config.dataset = "mnist5k"
  config.model.name = "cnn"
  config.model.dropout = 0.3
  config.fit.batch_size = 64
  config.fit.num_epochs = 8
  config.learning_rate = 3e-3
  config.validation_fraction = 0.0  # the test split scores it once, at the end
  config.fit.progress = False
  config.fit.tensorboard = False
  if tiny:
    config.model.features, config.model.hidden = 4, 16
    config.fit.num_steps = 4
  return config


def gan_config(tiny: bool = False) -> gan_train.GANConfig:
  """The networks: width 32, 64 latent dimensions (tiny: 4 and 8)."""
  if tiny:
    return gan_train.GANConfig(width=4, latent_dim=8)
  return gan_train.GANConfig(width=32, latent_dim=64)


def fit_config(tiny: bool = False, num_steps: int | None = None) -> dl.FitConfig:
  """2,500 steps of 64 real images, evaluated and checkpointed every 250 (tiny: 4 and 2)."""
  if tiny:
    config = dl.FitConfig(num_steps=4, batch_size=16, eval_every=2, log_every=2)
  else:
    config = dl.FitConfig(num_steps=2500, batch_size=64, eval_every=250, log_every=50)
  return dataclasses.replace(
    config, num_steps=num_steps or config.num_steps, keep_checkpoints=100, tensorboard=False
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--tiny", action="store_true", help="a few steps of tiny models")
  parser.add_argument("--spectral_norm", action="store_true")
  parser.add_argument("--r1_weight", type=float, default=0.0)
  parser.add_argument("--num_steps", type=int, default=None)
  args = parser.parse_args()
  start = time.perf_counter()
  config = dataclasses.replace(
    gan_config(args.tiny), spectral_norm=args.spectral_norm, r1_weight=args.r1_weight
  )
  fit = fit_config(args.tiny, args.num_steps)
  rows = run(config, fit, args.workdir, tiny=args.tiny)
  table = _table(rows, config, fit, time.perf_counter() - start)
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(table)
  print(table)


def run(
  config: gan_train.GANConfig, fit: dl.FitConfig, workdir: str, *, tiny: bool = False
) -> list[dict]:
  """Trains the judge and the GAN; returns one record per evaluation (and the real baseline)."""
  clf_config = classifier_config(tiny)
  clf_state, clf_history = dl.train(clf_config, os.path.join(workdir, "classifier"))
  judge = dl.build(clf_config).model
  variables = {"params": clf_state.params, **clf_state.model_state}
  train, test = (datasets.load_images("mnist5k", s) for s in ("train", "test"))  # [0, 1]
  reference = frechet.statistics(
    frechet.features(judge, variables, test["input"], layer=FEATURE_LAYER)
  )
  real = frechet.features(
    judge, variables, train["input"][: len(test["input"])], layer=FEATURE_LAYER
  )
  baseline = {
    "step": "reference: 1,000 real train images (accuracy: the CNN's on real test images)",
    "frechet": frechet.distance(*reference, *frechet.statistics(real)),
    "conditional_accuracy": clf_history["test"][-1]["accuracy"],
  }
  num_classes = int(train["label"].max()) + 1
  per_class = max(len(test["input"]) // num_classes, 2)

  def score(model: gan_train.GAN, state) -> dict[str, float]:
    z, labels = model.fixed_noise(per_class)
    images = (np.asarray(model.sample(state, z, labels)) + 1.0) / 2.0  # to the CNN's [0, 1]
    stats = frechet.statistics(frechet.features(judge, variables, images, layer=FEATURE_LAYER))
    accuracy = frechet.conditional_accuracy(judge, variables, images, np.asarray(labels))
    return {"frechet": frechet.distance(*reference, *stats), "conditional_accuracy": accuracy}

  arrays = {"input": train["input"] * 2.0 - 1.0, "label": train["label"]}
  gan = gan_train.build_gan(config, arrays, num_classes=num_classes, score=score)
  gan_dir = os.path.join(workdir, "gan")
  _, history = dl.fit(gan, gan_dir, fit, hooks=[gan_train.SampleGrid(gan, gan_dir)])
  return [*history["eval"], baseline]


def _table(rows: list[dict], config: gan_train.GANConfig, fit: dl.FitConfig, seconds: float) -> str:
  run = {**dataclasses.asdict(config), "num_steps": fit.num_steps, "batch_size": fit.batch_size}
  lines = [
    f"Conditional DCGAN on mnist5k: {json.dumps(run)}",
    f"{jax.device_count()} {jax.default_backend()} device(s), {seconds:.0f} s in all.",
    "",
    "| step | Frechet distance to test (CNN features) | conditional accuracy |",
    "|---|---|---|",
  ]
  for r in rows:
    lines.append(f"| {r['step']} | {r['frechet']:.2f} | {r['conditional_accuracy']:.1%} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
