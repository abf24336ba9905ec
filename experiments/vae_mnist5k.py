r"""Dense and convolutional VAEs on `mnist5k` (4,000 real MNIST train / 1,000 test digits).

python experiments/vae_mnist5k.py --workdir workdirs/vae_mnist5k

Trains each VAE with `dl.fit` on the train split (pixels in [0, 1], Bernoulli decoder, 16
latent dimensions; a `dl.task` whose objective is the negative ELBO, `vae.objective`) and
reports the test ELBO in nats per image (one z per image, scored once at the end), with its
reconstruction and KL terms. Writes `<kind>/` (checkpoints, metrics.jsonl),
`<kind>_samples.png` (prior draws), `<kind>_interpolation.png` (decoded lines between the
codes of test-image pairs) and `results.md` in the workdir. `--tiny` runs a few steps of
tiny models (for tests).
"""

import argparse
import os
import time

import jax
import optax

import dl
from dl.generative import datasets, images, networks, vae

LATENT_DIM = 16


def vae_task(kind: str, train, test, *, width: int) -> dl.Task:
  """A VAE of `kind` ("dense" or "conv") as parts: model, negative ELBO, Adam, data."""
  module = vae.VAE(*networks.encoder_decoder(kind, train["input"].shape[1:], 2 * LATENT_DIM, width))
  return dl.task(
    model=dl.Linen(module, rng_streams=(vae.LATENT,)),
    objective=vae.objective,
    optimizer=optax.adam(1e-3),
    train={"input": train["input"]},
    validation_fraction=0.0,  # all 4,000 train images; the test split is scored at the end
    test={"input": test["input"]},
    name=f"{kind} VAE",
  )


def train_vae(kind: str, train, test, workdir: str, *, num_steps: int, width: int) -> dict:
  """Trains one VAE, writes its PNGs, returns its test ELBO terms."""
  start = time.perf_counter()
  task = vae_task(kind, train, test, width=width)
  state, history = dl.fit(
    task,
    os.path.join(workdir, kind),
    num_steps=num_steps,
    batch_size=64,
    progress=False,
    tensorboard=False,
  )
  module, x = task.model.module, test["input"]
  samples = vae.sample(module, state.params, jax.random.PRNGKey(2), 80, LATENT_DIM)
  images.save_grid(
    os.path.join(workdir, f"{kind}_samples.png"),
    samples,
    num_cols=10,
    title=f"{kind} VAE: prior samples",
  )
  lines = vae.interpolate(module, state.params, x[:8], x[8:16], num_steps=10)
  images.save_grid(
    os.path.join(workdir, f"{kind}_interpolation.png"),
    lines.reshape((-1, *x.shape[1:])),
    num_cols=10,
    title=f"{kind} VAE: latent interpolation between test images",
  )
  result = history["test"][-1]
  return {"kind": kind, "steps": num_steps, **result, "seconds": time.perf_counter() - start}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--tiny", action="store_true", help="a few steps of tiny models")
  args = parser.parse_args()
  train, test = (datasets.load_images("mnist5k", s) for s in ("train", "test"))
  num_steps = 4 if args.tiny else 2000
  rows = [
    train_vae(kind, train, test, args.workdir, num_steps=num_steps, width=w)
    for kind, w in (("dense", 8 if args.tiny else 256), ("conv", 4 if args.tiny else 32))
  ]
  lines = [
    f"VAEs on mnist5k, latent {LATENT_DIM}, batch 64, Adam 1e-3; "
    f"{jax.device_count()} {jax.default_backend()} device(s).",
    "",
    "| VAE | steps | test ELBO (nats/image) | reconstruction -log p(x|z) | KL | wall s |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['kind']} | {r['steps']} | {r['elbo']:.1f} | {r['reconstruction']:.1f} | "
      f"{r['kl']:.1f} | {r['seconds']:.0f} |"
    )
  table = "\n".join(lines) + "\n"
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(table)
  print(table)


if __name__ == "__main__":
  main()
