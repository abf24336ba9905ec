r"""Unpaired translation between two real digit domains: scikit-learn `digits` and `mnist5k`.

python experiments/translate_digits.py --workdir workdirs/translate_digits

Domain A: the UCI digits in scikit-learn (8x8, 1,437 train / 360 test). Domain B: mnist5k
(real MNIST) downsampled to 8x8 (antialiased; 4,000 / 1,000). A CycleGAN pair
(`dl.generative.cyclegan.CycleGAN`, trained with `dl.fit` on batches zipped from one
shuffled stream per domain) learns A->B and B->A from unpaired images. To check that the
translation keeps the digit, a CNN trained (a `dl.task`, `dl.fit`) on domain B alone labels
domain-A test images as they are and after A->B translation. Writes `samples.png` (rows: A,
A->B, A->B->A, B, B->A), `classifier/` and `cyclegan/` (checkpoints, metrics.jsonl) and
`results.md` in the workdir. `--tiny`: a few steps.
"""

import argparse
import os
import time

import numpy as np
import optax

import dl
from dl.generative import cyclegan, datasets, dcgan, frechet, images


def load_domains() -> dict[str, dict[str, dict[str, np.ndarray]]]:
  """{"a"|"b": {"train"|"test": {"input": (N, 8, 8, 1) in [0, 1], "label"}}}."""
  return {
    "a": {s: datasets.load_images("digits", s) for s in ("train", "test")},
    "b": {s: datasets.load_images("mnist5k", s, size=8) for s in ("train", "test")},
  }


def train_classifier(arrays, workdir: str, *, num_steps: int, features: int):
  """A dl CNN trained on `arrays` (all of them) with `dl.fit`; returns (model, variables)."""
  task = dl.task(
    model=dl.models.create("cnn", num_classes=10, features=features, hidden=8 * features),
    objective=dl.core.objectives.classification,
    optimizer=optax.adam(3e-3),
    train=arrays,
    validation_fraction=0.0,
    name="cnn on domain B",
  )
  state, _ = dl.fit(
    task, workdir, num_steps=num_steps, batch_size=64, progress=False, tensorboard=False
  )
  return task.model, {"params": state.params, **state.model_state}


def train_translators(domains, workdir: str, *, num_steps: int, width: int):
  """The CycleGAN pair trained on the two train splits (images scaled to [-1, 1])."""
  tx = optax.adam(2e-4, b1=0.5)
  cycle = cyclegan.CycleGAN(
    translator=cyclegan.Translator(width=width),
    discriminator=dcgan.Discriminator(width=width),
    gen_tx=tx,
    disc_tx=tx,
    train={d: domains[d]["train"]["input"] * 2 - 1 for d in "ab"},
    test={d: domains[d]["test"]["input"] * 2 - 1 for d in "ab"},
    cycle_weight=10.0,
    identity_weight=5.0,
  )
  state, history = dl.fit(
    cycle, workdir, num_steps=num_steps, batch_size=64, progress=False, tensorboard=False
  )
  return cycle.translator, state, history


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--tiny", action="store_true", help="a few steps of tiny models")
  args = parser.parse_args()
  start = time.perf_counter()
  domains = load_domains()
  clf_steps, gan_steps, width = (4, 4, 4) if args.tiny else (1500, 3000, 32)
  model, variables = train_classifier(
    domains["b"]["train"],
    os.path.join(args.workdir, "classifier"),
    num_steps=clf_steps,
    features=4 if args.tiny else 16,
  )
  translator, state, history = train_translators(
    domains, os.path.join(args.workdir, "cyclegan"), num_steps=gan_steps, width=width
  )

  def to_b(x):  # [0, 1] domain-A images -> [0, 1] domain-B style
    out = cyclegan.translate(translator, state.gen_params["a_to_b"], x * 2 - 1)
    return np.asarray((out + 1) / 2)

  a_test, b_test = domains["a"]["test"], domains["b"]["test"]
  rows = {
    "B test (the classifier's own domain)": b_test["input"],
    "A test, untranslated": a_test["input"],
    "A test, translated A->B": to_b(a_test["input"]),
  }
  labels = {k: (b_test if k.startswith("B") else a_test)["label"] for k in rows}
  accuracy = {
    k: frechet.conditional_accuracy(model, variables, x, labels[k]) for k, x in rows.items()
  }
  _save_samples(args.workdir, translator, state, a_test["input"][:10], b_test["input"][:10])
  lines = [
    f"CycleGAN digits (A) <-> mnist5k 8x8 (B): {gan_steps} steps, width {width}, cycle weight 10, "
    f"identity weight 5; domain-B CNN {clf_steps} steps; "
    f"cycle L1 on the test images {history['test'][-1]['cycle_loss']:.3f}; "
    f"{time.perf_counter() - start:.0f} s in all.",
    "",
    "| images | accuracy of the domain-B CNN |",
    "|---|---|",
    *(f"| {k} | {v:.1%} |" for k, v in accuracy.items()),
  ]
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def _save_samples(workdir, translator, state, a, b):
  def t(name, x):
    return np.asarray(cyclegan.translate(translator, state.gen_params[name], x))

  a, b = a * 2 - 1, b * 2 - 1
  a_to_b = t("a_to_b", a)
  grid = np.concatenate([a, a_to_b, t("b_to_a", a_to_b), b, t("b_to_a", b)])
  images.save_grid(
    os.path.join(workdir, "samples.png"),
    grid,
    num_cols=len(a),
    value_range=(-1.0, 1.0),
    row_labels=["A", "A->B", "A->B->A", "B", "B->A"],
    title="digits (A) <-> MNIST 8x8 (B)",
  )


if __name__ == "__main__":
  main()
