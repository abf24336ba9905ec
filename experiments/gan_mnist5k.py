r"""Conditional DCGAN on `mnist5k` (4,000 real MNIST train digits, 28x28), scored by a dl CNN.

python experiments/gan_mnist5k.py --workdir workdirs/gan_mnist5k

Trains the mnist5k CNN with `dl.train` (the Frechet-distance feature extractor and the
judge of conditional samples), then the GAN with `dl.generative.train_gan`. At every
checkpoint it generates 1,000 images (100 per class) and reports the Frechet distance of
their CNN features (the 256-unit hidden layer) to the 1,000 real test images', and the share
the CNN labels as the class they were generated for. Writes `samples_<step>.png`,
`metrics.jsonl` and `results.md` in the workdir; a workdir with checkpoints is resumed.
`--tiny` runs a few steps of tiny models (for tests).
"""

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

import dl
from dl.generative import frechet, gan_train

FEATURE_LAYER = "Dense_0"


def classifier_config(tiny: bool = False):
  """The CNN of `mnist5k_cnn.py`, trained for 8 epochs (tiny: 4 steps, 8 channels)."""
  config = dl.default_config()
  config.dataset = "mnist5k"
  config.model.name = "cnn"
  config.model.dropout = 0.3
  config.batch_size = 64
  config.num_epochs = 8
  config.learning_rate = 3e-3
  config.progress = False
  config.tensorboard = False
  if tiny:
    config.model.features, config.model.hidden = 4, 16
    config.num_train_steps = 4
  return config


def gan_config(tiny: bool = False) -> gan_train.GANConfig:
  if tiny:
    return gan_train.GANConfig(
      width=4, latent_dim=8, batch_size=16, num_steps=4, checkpoint_every=2
    )
  return gan_train.GANConfig(width=32, latent_dim=64, num_steps=2500, checkpoint_every=250)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--tiny", action="store_true", help="a few steps of tiny models")
  parser.add_argument("--spectral_norm", action="store_true")
  parser.add_argument("--r1_weight", type=float, default=0.0)
  parser.add_argument("--num_steps", type=int, default=None)
  args = parser.parse_args()
  start = time.perf_counter()
  config = gan_config(args.tiny)
  config = dataclasses.replace(
    config,
    spectral_norm=args.spectral_norm,
    r1_weight=args.r1_weight,
    num_steps=args.num_steps or config.num_steps,
  )
  rows = run(config, args.workdir, tiny=args.tiny)
  table = _table(rows, config, time.perf_counter() - start)
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(table)
  print(table)


def run(config: gan_train.GANConfig, workdir: str, *, tiny: bool = False) -> list[dict]:
  """Trains the judge and the GAN; returns one record per checkpoint (and the real baseline)."""
  clf_config = classifier_config(tiny)
  clf_state, clf_history = dl.train(clf_config, os.path.join(workdir, "classifier"))
  clf = dl.build(clf_config)
  variables = {"params": clf_state.params, **clf_state.model_state}
  test_x = clf.eval["input"]  # [0, 1]
  reference = frechet.statistics(
    frechet.features(clf.model, variables, test_x, layer=FEATURE_LAYER)
  )
  real = frechet.features(
    clf.model, variables, clf.train["input"][: len(test_x)], layer=FEATURE_LAYER
  )
  baseline = {
    "step": "reference: 1,000 real train images (accuracy: the CNN's on real test images)",
    "frechet": frechet.distance(*reference, *frechet.statistics(real)),
    "conditional_accuracy": clf_history["eval"][-1]["accuracy"],
  }
  per_class = max(len(test_x) // clf.spec.num_classes, 2)

  def evaluate(model: gan_train.GAN, state) -> dict[str, float]:
    z, labels = model.fixed_noise(per_class)
    images = (np.asarray(model.sample(state, z, labels)) + 1.0) / 2.0  # to the CNN's [0, 1]
    stats = frechet.statistics(frechet.features(clf.model, variables, images, layer=FEATURE_LAYER))
    accuracy = frechet.conditional_accuracy(clf.model, variables, images, np.asarray(labels))
    return {"frechet": frechet.distance(*reference, *stats), "conditional_accuracy": accuracy}

  arrays = {"input": clf.train["input"] * 2.0 - 1.0, "label": clf.train["label"]}
  gan_dir = os.path.join(workdir, "gan")
  gan_train.train_gan(config, arrays, gan_dir, num_classes=clf.spec.num_classes, evaluate=evaluate)
  history = dl.read_history(os.path.join(gan_dir, "metrics.jsonl"))
  return [*history["eval"], baseline]


def _table(rows: list[dict], config, seconds: float) -> str:
  lines = [
    f"Conditional DCGAN on mnist5k: {json.dumps(dataclasses.asdict(config))}",
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
