r"""Explains the digits CNN (`digits_cnn.py`): Grad-CAM, SmoothGrad, gradients and
Integrated Gradients for test images, saved as PNGs; plus the completeness and
model-randomisation checks.

python experiments/explain_digits.py --workdir workdirs/digits_cnn

Trains the CNN with `dl.train` (or resumes / restores it from the workdir's checkpoints),
then writes `grad_cam.png`, `smoothgrad.png` and `explain_digits.png` (every method) there.
"""

import argparse
import importlib.util
import json
import os

import jax
import jax.numpy as jnp

import dl
from dl.trust import explain


def get_config():
  """The config of `digits_cnn.py`, the model this script explains."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_cnn.py")
  spec = importlib.util.spec_from_file_location("digits_cnn", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def explain_digits(workdir: str, num_examples: int = 8, layer: str = "Conv_1") -> dict:
  """Trains (or restores) the CNN, writes the PNGs to `workdir`, returns the checks' figures."""
  config = get_config()
  config.fit.progress = False
  dl.train(config, workdir)  # returns at once when the run is complete
  state = dl.restore(config, workdir, step="best")  # the model chosen on validation
  task = dl.build(config)
  variables = {"params": state.params, **state.model_state}
  x_BxHxWxC = jnp.asarray(task.test["input"][:num_examples])
  y_B = jnp.asarray(task.test["label"][:num_examples])
  maps = _maps(task.model.module, variables, x_BxHxWxC, y_B, layer)
  titles = [f"label {int(y)}" for y in y_B]
  for name, file in (("Grad-CAM", "grad_cam.png"), ("SmoothGrad", "smoothgrad.png")):
    explain.save_overlays(os.path.join(workdir, file), x_BxHxWxC, {name: maps[name]}, titles=titles)
  explain.save_overlays(os.path.join(workdir, "explain_digits.png"), x_BxHxWxC, maps, titles=titles)
  return _checks(task, variables, x_BxHxWxC, y_B, maps, layer)


def _maps(model, variables, x, y, layer: str) -> dict[str, jax.Array]:
  return {
    "Grad-CAM": explain.grad_cam(model, variables, x, y, layer=layer),
    "SmoothGrad": explain.heatmap(explain.smoothgrad(model, variables, x, y, jax.random.key(0))),
    "gradient": explain.heatmap(explain.saliency(model, variables, x, y)),
    "Integrated Gradients": explain.heatmap(
      explain.integrated_gradients(model, variables, x, y, num_steps=128)
    ),
  }


def _checks(task, variables, x, y, maps, layer: str) -> dict:
  """IG completeness error, and rank correlation of each map with a random model's."""
  module = task.model.module
  ig = explain.integrated_gradients(module, variables, x, y, num_steps=128)
  gap = explain.class_scores(module, variables, x, y) - explain.class_scores(
    module, variables, jnp.zeros_like(x), y
  )
  rel_error = jnp.abs(ig.sum(axis=(1, 2, 3)) - gap) / jnp.abs(gap)
  random_state = task.init(seed=1)
  random_vars = {"params": random_state.params, **random_state.model_state}
  random_maps = _maps(module, random_vars, x, y, layer)
  corr = {
    name: float(jnp.mean(explain.rank_correlation(maps[name], random_maps[name]))) for name in maps
  }
  return {"ig_max_relative_completeness_error": float(rel_error.max()), "rank_corr_vs_random": corr}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_examples", type=int, default=8)
  parser.add_argument("--layer", default="Conv_1")
  args = parser.parse_args()
  checks = explain_digits(args.workdir, args.num_examples, args.layer)
  print(json.dumps({"workdir": args.workdir, **checks}, indent=1))
  print(f"wrote grad_cam.png, smoothgrad.png, explain_digits.png in {args.workdir}")


if __name__ == "__main__":
  main()
