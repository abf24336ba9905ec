r"""Object detection on SYNTHETIC canvases of real MNIST digits: a small CenterNet, mAP@0.5.

python experiments/synthetic_digit_boxes_centernet.py --workdir workdirs/synthetic_digit_boxes

The data set `synthetic_digit_boxes` is synthetic: 1-4 real MNIST digits pasted at seeded
random positions and sizes into 64x64 canvases (see dl/data/builders/). A CenterNet-style
detector (`dl.models.CenterNet`) learns per-class centre heat maps and box sizes, trained
with `dl.train_step` and the objective `dl.detection.centernet_objective`; its top-20 peaks
per canvas go through per-class NMS (IoU 0.5) and are scored by mAP@0.5 (all-point, VOC
2010+; COCO's 101-point value beside it) on the 500 test canvases. Writes `results.md`,
`detections.png` (test canvases: ground truth green, detections red) and a checkpoint.
"""

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import dl
from dl import detection

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DATASET = "synthetic_digit_boxes"
NUM_CLASSES = 10
IMAGE_HW = (64, 64)


def settings(tiny: bool) -> dict:
  return {
    "features": 4 if tiny else 16,
    "epochs": 1 if tiny else 8,
    "max_steps": 3 if tiny else None,
    "batch_size": 32,
    "learning_rate": 3e-3,
    "warmup_steps": 100,
    "top_k": 20,
    "nms_iou": 0.5,
    "min_score": 0.01,
    "seed": 0,
  }


def load(split: str, limit: int | None = None) -> dict[str, np.ndarray]:
  """Canvases as float inputs in [0, 1] plus CenterNet targets and the raw boxes."""
  arrays = dl.data.load(DATASET, split)
  if limit:
    arrays = {k: v[:limit] for k, v in arrays.items()}
  batch = detection.centernet_targets(arrays["boxes"], arrays["classes"], IMAGE_HW, NUM_CLASSES)
  batch["input"] = arrays["image"].astype(np.float32) / 255.0
  return {**batch, "boxes": arrays["boxes"], "classes": arrays["classes"]}


def train(model, data: dict[str, np.ndarray], s: dict) -> dl.TrainState:
  """Adam with warmup and cosine decay, `dl.train_step` with the CenterNet objective, jitted."""
  steps_per_epoch = len(data["input"]) // s["batch_size"]
  num_steps = s["max_steps"] or s["epochs"] * steps_per_epoch
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, s["learning_rate"], min(s["warmup_steps"], num_steps // 10), num_steps
  )
  tx = optax.adam(schedule)
  state = dl.create_train_state(model, tx, jax.random.PRNGKey(s["seed"]), (*IMAGE_HW, 1))
  step = jax.jit(
    functools.partial(
      dl.train_step, apply_fn=model.apply, tx=tx, objective=detection.centernet_objective
    ),
    donate_argnames=("state",),
  )
  keys = ("input", "label", "box", "center")
  rng = np.random.default_rng(s["seed"])
  while int(state.step) < num_steps:
    order = rng.permutation(len(data["input"]))
    for i in range(min(steps_per_epoch, num_steps - int(state.step))):
      rows = order[i * s["batch_size"] : (i + 1) * s["batch_size"]]
      state, metrics = step(state, {k: data[k][rows] for k in keys})
    print(f"step {int(state.step)}: loss {float(metrics['loss']):.3f}", flush=True)
  return state


def detect(model, params, inputs: np.ndarray, s: dict) -> list[dict[str, np.ndarray]]:
  """Per canvas: the decoded peaks that survive per-class NMS and score >= min_score."""

  @jax.jit
  def run(x):
    d = detection.decode_centernet(
      model.apply({"params": params}, x), NUM_CLASSES, top_k=s["top_k"]
    )
    nms = functools.partial(detection.nms, iou_threshold=s["nms_iou"])
    keep = jax.vmap(nms)(d["boxes"], d["scores"], classes_K=d["classes"])
    return d, keep & (d["scores"] >= s["min_score"])

  decoded, keep = jax.tree.map(np.asarray, run(jnp.asarray(inputs)))
  return [{k: v[i][keep[i]] for k, v in decoded.items()} for i in range(len(inputs))]


def ground_truths(data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
  real = data["classes"] >= 0
  return [
    {"boxes": data["boxes"][i][real[i]], "classes": data["classes"][i][real[i]]}
    for i in range(len(real))
  ]


def draw(path: str, inputs, truths, detections, min_score: float = 0.3, count: int = 8) -> None:
  """Test canvases with ground truth (green) and detections scoring >= min_score (red)."""
  fig, axes = plt.subplots(1, count, figsize=(2.2 * count, 2.6))
  for ax, x, gt, det in zip(axes, inputs, truths, detections):
    ax.imshow(x[..., 0], cmap="gray")
    for (x0, y0, x1, y1), c in zip(gt["boxes"], gt["classes"]):
      ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1))
    for (x0, y0, x1, y1), c, p in zip(det["boxes"], det["classes"], det["scores"]):
      if p >= min_score:
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1))
        ax.text(x0, y0 - 1, f"{c} {p:.2f}", color="red", fontsize=7)
    ax.axis("off")
  fig.suptitle("synthetic_digit_boxes test canvases (SYNTHETIC): truth green, detections red")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def results_markdown(result_all, result_coco, wall, s, num_test) -> str:
  per_class = " | ".join(f"{result_all['ap'][c]:.3f}" for c in sorted(result_all["ap"]))
  return "\n".join(
    [
      f"SYNTHETIC data: `{DATASET}`, {num_test} test canvases; CenterNet "
      f"(features {s['features']}), {s['epochs']} epochs, train wall {wall:.0f} s.",
      "",
      "| metric | value |",
      "|---|---|",
      f"| mAP@0.5, all-point (VOC 2010+) | {result_all['map']:.4f} |",
      f"| mAP@0.5, COCO 101-point (= pycocotools AP50) | {result_coco['map']:.4f} |",
      "",
      "| AP@0.5 per digit | " + " | ".join(str(c) for c in sorted(result_all["ap"])) + " |",
      "|---|" + "---|" * len(result_all["ap"]),
      f"| all-point | {per_class} |",
    ]
  )


def run(workdir: str, tiny: bool = False) -> dict:
  """Trains, checkpoints, detects and scores; writes results.md and detections.png to workdir.

  Returns:
    The all-point mAP@0.5 result {"map", "ap"}.
  """
  s = settings(tiny)
  limit = 64 if tiny else None
  train_data, test_data = load("train", limit), load("test", limit)
  model = dl.models.CenterNet(num_classes=NUM_CLASSES, features=s["features"])
  start = time.perf_counter()
  state = train(model, train_data, s)
  wall = time.perf_counter() - start
  checkpointer = dl.Checkpointer(os.path.join(workdir, "checkpoints"))
  checkpointer.save(int(state.step), state, {"epochs": s["epochs"]})
  checkpointer.wait()
  detections = detect(model, state.params, test_data["input"], s)
  truths = ground_truths(test_data)
  result_all = detection.mean_average_precision(detections, truths)
  result_coco = detection.mean_average_precision(detections, truths, interpolation="coco_101")
  draw(os.path.join(workdir, "detections.png"), test_data["input"], truths, detections)
  markdown = results_markdown(result_all, result_coco, wall, s, len(truths))
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown + "\n")
  print(markdown)
  return result_all


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/synthetic_digit_boxes")
  parser.add_argument("--tiny", action="store_true", help="a few steps on 64 canvases (tests)")
  args = parser.parse_args()
  run(args.workdir, args.tiny)


if __name__ == "__main__":
  main()
