r"""Object detection on SYNTHETIC canvases of real MNIST digits: a small CenterNet, mAP@0.5.

python experiments/synthetic_digit_boxes_centernet.py --workdir workdirs/synthetic_digit_boxes

The data set `synthetic_digit_boxes` is synthetic: 1-4 real MNIST digits pasted at seeded
random positions and sizes into 64x64 canvases (see dl/data/builders/). A CenterNet-style
detector (`dl.models.CenterNet`) learns per-class centre heat maps and box sizes through
`dl.fit` (a `dl.task` with the objective `dl.apps.detection.centernet_objective`, Adam with
warmup and cosine decay); its top-20 peaks per canvas go through per-class NMS (IoU 0.5)
and are scored by mAP@0.5 (all-point, VOC 2010+; COCO's 101-point value beside it). The
builder has train and test splits: 10% of the train canvases are held out for validation,
whose mAP (`dl.apps.detection.MeanAveragePrecision`, a hook) chooses the checkpoint after each
epoch; the 500 test canvases score that checkpoint once. A rerun in the same workdir
resumes from its newest checkpoint. Writes checkpoints, `metrics.jsonl`, `curves.png`,
`results.md` and `detections.png` (test canvases: ground truth green, detections red).
"""

import argparse
import os
import time

import matplotlib
import numpy as np
import optax

import dl
from dl.apps import detection
from dl.data import sources

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
    "validation_fraction": 0.1,
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


def make_task(train, validation, test, s: dict) -> tuple[dl.Task, int]:
  """CenterNet, its objective, Adam with warmup and cosine decay; and the number of steps."""
  num_steps = s["max_steps"] or s["epochs"] * (len(train["input"]) // s["batch_size"])
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, s["learning_rate"], min(s["warmup_steps"], num_steps // 10), num_steps
  )
  task = dl.task(
    model=dl.models.CenterNet(num_classes=NUM_CLASSES, features=s["features"]),
    objective=detection.centernet_objective,
    optimizer=optax.adam(schedule),
    train=train,
    eval=validation,
    test=test,
    name=f"CenterNet/{DATASET}",
  )
  return task, num_steps


def draw(path: str, inputs, truths, detections, min_score: float = 0.3, count: int = 8) -> None:
  """Test canvases with ground truth (green) and detections scoring >= min_score (red)."""
  fig, axes = plt.subplots(1, count, figsize=(2.2 * count, 2.6))
  for ax, x, gt, det in zip(axes, inputs, truths, detections):
    ax.imshow(x[..., 0], cmap="gray")
    for x0, y0, x1, y1 in gt["boxes"]:
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


def results_markdown(test: dict, wall: float, s: dict, num_test: int, num_validation: int) -> str:
  classes = sorted(int(k.removeprefix("ap_")) for k in test if k.startswith("ap_"))
  per_class = " | ".join(f"{test[f'ap_{c}']:.3f}" for c in classes)
  return "\n".join(
    [
      f"SYNTHETIC data: `{DATASET}`, {num_test} test canvases; CenterNet "
      f"(features {s['features']}), {s['epochs']} epochs, train wall {wall:.0f} s; the "
      f"checkpoint with the best mAP@0.5 on {num_validation} validation canvases (held out "
      f"of train) is scored on test, once (step {test['step']}).",
      "",
      "| metric | value |",
      "|---|---|",
      f"| mAP@0.5, all-point (VOC 2010+) | {test['map']:.4f} |",
      f"| mAP@0.5, COCO 101-point (= pycocotools AP50) | {test['map_coco_101']:.4f} |",
      "",
      "| AP@0.5 per digit | " + " | ".join(str(c) for c in classes) + " |",
      "|---|" + "---|" * len(classes),
      f"| all-point | {per_class} |",
    ]
  )


def run(workdir: str, tiny: bool = False) -> dict:
  """Trains with dl.fit (resuming from `workdir` if it holds checkpoints), choosing the
  checkpoint by validation mAP; scores it on test; writes results.md and detections.png.

  Returns:
    The test record: {"map", "map_coco_101", "ap_<class>", "step", ...}.
  """
  s = settings(tiny)
  limit = 64 if tiny else None
  train, validation = sources.split_validation(load("train", limit), s["validation_fraction"])
  test = load("test", limit)
  task, num_steps = make_task(train, validation, test, s)
  nms = {"top_k": s["top_k"], "iou_threshold": s["nms_iou"], "min_score": s["min_score"]}
  hook = detection.MeanAveragePrecision(
    task.model, {"eval": validation, "test": test}, NUM_CLASSES, **nms
  )
  config = dl.FitConfig(
    num_steps=num_steps,
    batch_size=s["batch_size"],
    eval_batch_size=256,
    seed=s["seed"],
    best_metric="map",
    best_mode="max",
    log_every=20,
    progress=not tiny,
    tensorboard=not tiny,
  )
  start = time.perf_counter()
  _, history = dl.fit(task, workdir, config, hooks=[hook])
  wall = time.perf_counter() - start
  result = history["test"][-1]
  best = dl.restore(task, workdir, step="best", fit=config)
  shown = test["input"][:8]
  detections = detection.detect(best, task.model, shown, NUM_CLASSES, **nms)
  truths = detection.ground_truths(test["boxes"][:8], test["classes"][:8])
  draw(os.path.join(workdir, "detections.png"), shown, truths, detections)
  markdown = results_markdown(result, wall, s, len(test["input"]), len(validation["input"]))
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown + "\n")
  print(markdown)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/synthetic_digit_boxes")
  parser.add_argument("--tiny", action="store_true", help="a few steps on 64 canvases (tests)")
  args = parser.parse_args()
  run(args.workdir, args.tiny)


if __name__ == "__main__":
  main()
