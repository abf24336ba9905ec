r"""Nuclei segmentation on SYNTHETIC fluorescence microscopy: a U-Net against Otsu + watershed.

python experiments/nuclei_unet.py --workdir workdirs/nuclei_unet

The data set `synthetic_nuclei` is GENERATED (dl/data/builders/nuclei.py): textured,
touching, irregular ellipses of varied brightness, blurred, unevenly lit, with photon and
read noise; 64x64 images, 1,000 train / 250 test, with semantic and instance masks. A U-Net
(`dl.models.UNet`) learns per-pixel nucleus/background logits through `dl.fit` (a `dl.task`
with `dl.apps.segmentation.segmentation_objective()`: per-pixel cross-entropy + soft Dice; Adam
with warmup and cosine decay). 10% of the train images are held out for validation, whose
Dice chooses the checkpoint; the test split scores it once.

In the same run, on the same test images, the classical baseline from scikit-image: Gaussian
smoothing + Otsu's threshold (semantic), then distance-transform watershed (instances). The
U-Net's masks go through the same watershed, so the instance comparison differs only in the
foreground mask. Reported: mean per-image Dice and IoU; instance F1 at IoU 0.5 and panoptic
quality; the recall of true nuclei by contrast and by whether they touch a neighbour.

Also written, to `--workdir`: `results.md`, `overlays.png` (the U-Net's masks on real
microscopy images shipped in scikit-image's wheel: `cell`, a quantitative phase image of one
cell, and `immunohistochemistry`'s haematoxylin channel; `human_mitosis` is not in the wheel,
it downloads on first use, so it is left out; no ground truth: a qualitative look) and
`explanation.png` (Integrated Gradients and Grad-CAM of one predicted nucleus, through
`dl.trust.explain`). A rerun in the same workdir resumes from its newest checkpoint.
"""

import argparse
import os
import time

import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import PIL.Image
from scipy import ndimage

import dl
from dl.apps import segmentation
from dl.data import sources
from dl.trust import explain

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DATASET = "synthetic_nuclei"
REAL_IMAGES = {  # name: (scale to training nuclei size, what it is)
  "cell": (1 / 8, "quantitative phase image of one cell"),
  "immunohistochemistry": (0.75, "IHC tissue; models see haematoxylin"),
}


def settings(tiny: bool) -> dict:
  return {
    "config": "tiny" if tiny else "64",
    "features": 4 if tiny else 16,
    "levels": 2 if tiny else 3,
    "num_steps": 3 if tiny else 1000,
    "batch_size": 4 if tiny else 16,
    "learning_rate": 3e-3,
    "warmup_steps": 100,
    "eval_every": 1 if tiny else 100,
    "validation_fraction": 0.1 if not tiny else 0.25,
    "dice_weight": 1.0,
    "min_distance": 3,
    "seed": 0,
  }


def load(config: str, split: str) -> dict[str, np.ndarray]:
  """A split as model inputs (percentile-normalised images), labels and instance masks."""
  arrays = dl.data.load(f"{DATASET}/{config}", split)
  return {
    "input": segmentation.normalize(arrays["image"]),
    "label": arrays["label"].astype(np.int32),
    "instances": arrays["instances"].astype(np.int32),
    "image": arrays["image"][..., 0],
  }


def make_task(train, validation, test, s: dict) -> dl.Task:
  """The U-Net, CE + soft Dice, Adam with warmup and cosine decay, on the model's keys."""
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, s["learning_rate"], min(s["warmup_steps"], s["num_steps"] // 10), s["num_steps"]
  )
  keys = ("input", "label")
  return dl.task(
    model=dl.models.UNet(num_classes=2, features=s["features"], levels=s["levels"]),
    objective=segmentation.segmentation_objective(dice_weight=s["dice_weight"]),
    optimizer=optax.adam(schedule),
    train={k: train[k] for k in keys},
    eval={k: validation[k] for k in keys},
    test={k: test[k] for k in keys},
    name=f"UNet/{DATASET}",
  )


def fit(task: dl.Task, workdir: str, s: dict, tiny: bool):
  """Trains through dl.fit; returns the state chosen on validation and the history."""
  config = dl.FitConfig(
    num_steps=s["num_steps"],
    batch_size=s["batch_size"],
    eval_batch_size=256,
    eval_every=s["eval_every"],
    log_every=1 if tiny else 50,
    seed=s["seed"],
    progress=not tiny,
    tensorboard=not tiny,
  )
  _, history = dl.fit(task, workdir, config)
  return dl.restore(task, workdir, step="best", fit=config), history


def unet_masks(state, task: dl.Task, inputs_BxHxWx1: np.ndarray, batch: int = 64) -> np.ndarray:
  """(B, H, W) bool: pixels the U-Net calls nucleus (argmax), any image size it accepts."""
  masks = []
  for i in range(0, len(inputs_BxHxWx1), batch):
    logits = dl.inference.outputs(state, task.model, {"input": inputs_BxHxWx1[i : i + batch]})
    masks.append(np.argmax(logits, axis=-1) > 0)
  return np.concatenate(masks)


def semantic_scores(masks_BxHxW: np.ndarray, labels_BxHxW: np.ndarray) -> dict[str, float]:
  """Mean per-image Dice and IoU."""
  return {
    "dice": float(np.mean(segmentation.dice(masks_BxHxW, labels_BxHxW))),
    "iou": float(np.mean(segmentation.iou(masks_BxHxW, labels_BxHxW))),
  }


def nucleus_recall(test: dict, predicted_NxHxW: np.ndarray) -> dict[str, float]:
  """Recall of true nuclei (matched at IoU > 0.5) by contrast tertile and by touching.

  Contrast: the nucleus's median intensity over its image's 99.8th percentile, after the
  image's 1st percentile (the background) is subtracted. Touching: the nucleus's one-pixel
  dilation reaches another nucleus.
  """
  rows = []  # (contrast, touching, matched)
  for image, truth, pred in zip(test["image"], test["instances"], predicted_NxHxW, strict=True):
    matched = segmentation.instance_ious(truth, pred).max(axis=1, initial=0.0) > 0.5
    lo, hi = np.percentile(image, (1, 99.8))
    for i, hit in zip(range(1, truth.max() + 1), matched, strict=True):
      inside = truth == i
      ring = ndimage.binary_dilation(inside) & ~inside
      contrast = (np.median(image[inside]) - lo) / max(hi - lo, 1.0)
      rows.append((contrast, bool(((truth > 0) & ring).any()), hit))
  contrast, touching, hit = (np.array(c) for c in zip(*rows))
  edges = np.quantile(contrast, [1 / 3, 2 / 3])
  tertile = np.digitize(contrast, edges)
  out = {f"contrast_{t}": float(hit[tertile == t].mean()) for t in range(3)}
  out |= {"touching": float(hit[touching].mean()), "isolated": float(hit[~touching].mean())}
  return out | {"num_touching": int(touching.sum()), "num_nuclei": len(hit)}


def false_positives(truth_NxHxW: np.ndarray, pred_NxHxW: np.ndarray) -> dict[str, int]:
  """Unmatched predicted instances by what lies under them: background (over half of its
  pixels), a fragment (over half on one true nucleus: a split), or else several nuclei (a
  merge)."""
  counts = {"fragment": 0, "background": 0, "merge": 0}
  for truth, pred in zip(truth_NxHxW, pred_NxHxW, strict=True):
    ious = segmentation.instance_ious(truth, pred)
    for j, i in enumerate(np.unique(pred[pred > 0])):
      if ious[:, j].max(initial=0.0) > 0.5:
        continue
      pixels_per_id = np.bincount(truth[pred == i])  # [0]: background
      half = pixels_per_id.sum() / 2
      if pixels_per_id[0] > half:
        counts["background"] += 1
      elif pixels_per_id[1:].max(initial=0) > half:
        counts["fragment"] += 1
      else:
        counts["merge"] += 1
  return counts


def compare(state, task: dl.Task, test: dict, s: dict) -> dict[str, dict]:
  """Semantic and instance scores of the U-Net and of Otsu (+ watershed) on the test images."""
  masks = {
    "U-Net": unet_masks(state, task, test["input"]),
    "Otsu": segmentation.otsu_masks(test["image"]),
  }
  rows = {}
  for name, m in masks.items():
    instances = segmentation.watershed_instances(m, min_distance=s["min_distance"])
    rows[name] = {
      **semantic_scores(m, test["label"]),
      **segmentation.instance_scores(test["instances"], instances),
      "recall": nucleus_recall(test, instances),
      "false_positives": false_positives(test["instances"], instances),
      "per_image_dice": segmentation.dice(m, test["label"]),
    }
  return rows


def real_images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """name -> (what to show, the grey image the models see, rescaled and cropped to / 8)."""
  import skimage.color  # pylint: disable=import-outside-toplevel
  import skimage.data  # pylint: disable=import-outside-toplevel
  import skimage.transform  # pylint: disable=import-outside-toplevel

  shown = {
    "cell": skimage.data.cell().astype(np.float32),
    "immunohistochemistry": skimage.data.immunohistochemistry(),
  }
  out = {}
  for name, picture in shown.items():
    grey = skimage.color.rgb2hed(picture)[..., 0] if picture.ndim == 3 else picture
    scale = REAL_IMAGES[name][0]
    grey = skimage.transform.rescale(grey, scale, anti_aliasing=True)
    shown_small = skimage.transform.rescale(
      picture, scale, anti_aliasing=True, channel_axis=-1 if picture.ndim == 3 else None
    )
    h, w = (d - d % 8 for d in grey.shape)
    out[name] = (shown_small[:h, :w], grey[:h, :w].astype(np.float32))
  return out


def draw_overlays(path: str, state, task: dl.Task) -> None:
  """Each real image, then the U-Net's and Otsu's masks on it, filled and outlined (no
  ground truth)."""
  images = real_images()
  fig, axes = plt.subplots(len(images), 3, figsize=(10.5, 3.8 * len(images)), squeeze=False)
  for row, (name, (picture, grey)) in zip(axes, images.items()):
    x = segmentation.normalize(grey[None])[..., None]
    masks = {"U-Net": unet_masks(state, task, x)[0], "Otsu": segmentation.otsu_masks(grey[None])[0]}
    shown = (picture - picture.min()) / max(float(np.ptp(picture)), 1e-6)
    cmap = "gray" if shown.ndim == 2 else None
    row[0].imshow(shown, cmap=cmap)
    row[0].set_title(f"skimage.data.{name}\n{REAL_IMAGES[name][1]}", fontsize=9)
    for ax, (method, mask) in zip(row[1:], masks.items()):
      ax.imshow(shown, cmap=cmap)
      ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.35, vmin=0, vmax=1)
      ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
      ax.set_title(f"{method} mask ({mask.mean():.0%} of pixels)", fontsize=9)
  for ax in axes.flat:
    ax.axis("off")
  fig.suptitle(
    "Real microscopy from scikit-image's wheel, no ground truth: a qualitative look only "
    "(U-Net trained on SYNTHETIC nuclei)",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)
  PIL.Image.open(path).convert("RGB").quantize(128).save(path, optimize=True)  # 1/3 the bytes


def explain_one(path: str, state, task: dl.Task, test: dict, s: dict) -> dict[str, float]:
  """Integrated Gradients and Grad-CAM of one predicted nucleus of a test image (the U-Net
  as a classifier of that region, `dl.apps.segmentation.RegionLogits`); writes the PNG.

  Returns:
    How local each map is: its share of the map's total within 3 pixels of the nucleus
    ("near_<map>"; that neighbourhood covers "near_area" of the image), and IG's
    completeness error.
  """
  x = test["input"][:1]
  mask = unet_masks(state, task, x)
  instances = segmentation.watershed_instances(mask, min_distance=s["min_distance"])[0]
  if not instances.any():  # an untrained U-Net (--tiny) may find none: explain a true one
    instances = test["instances"][0]
  sizes = np.bincount(instances.ravel())
  sizes[0] = 0
  region = (instances == np.argmax(sizes)).astype(np.float32)[None]
  wrapped = segmentation.RegionLogits(task.model.module)
  variables = segmentation.region_variables(state.params, region, state.model_state)
  nucleus = jnp.ones((1,), jnp.int32)
  ig = explain.integrated_gradients(wrapped, variables, x, nucleus, num_steps=64)
  scores = [explain.class_scores(wrapped, variables, z, nucleus)[0] for z in (x, 0 * x)]
  cams = {
    f"Grad-CAM {layer}": explain.grad_cam(wrapped, variables, x, nucleus, layer=f"model/{layer}")
    for layer in ("bottleneck", "up_0")
  }
  maps = {"explained nucleus": region, "Integrated Gradients": explain.heatmap(ig), **cams}
  explain.save_overlays(path, x, maps, titles=["test image 0"])
  near = ndimage.binary_dilation(region[0] > 0, iterations=3)
  shares = {
    f"near_{name}": float(np.sum(np.asarray(m[0])[near]) / max(np.sum(np.asarray(m[0])), 1e-12))
    for name, m in list(maps.items())[1:]
  }
  return shares | {
    "near_area": float(near.mean()),
    "ig_completeness_error": float(
      abs(np.sum(ig) - (scores[0] - scores[1])) / abs(scores[0] - scores[1])
    ),
  }


def results_markdown(rows: dict, test_record: dict, why: dict, s: dict, info: dict) -> str:
  """The tables of results.md."""
  lines = [
    f"SYNTHETIC data: `{DATASET}/{s['config']}`, {info['num_test']} test images "
    f"({info['num_train']} trained on, {info['num_validation']} validation); U-Net features "
    f"{s['features']}, levels {s['levels']}, {s['num_steps']} steps of batch {s['batch_size']}, "
    f"seed {s['seed']}; dl.fit wall time in this call {info['wall']:.0f} s. The checkpoint "
    f"with the best validation Dice (step {test_record['step']}) is scored on test once.",
    "",
    "| method | Dice | IoU | instance F1@0.5 | panoptic quality | TP / FP / FN |",
    "|---|---|---|---|---|---|",
  ]
  for name, r in rows.items():
    method = f"{name} + watershed" if name == "Otsu" else f"{name} (+ same watershed)"
    lines.append(
      f"| {method} | {r['dice']:.4f} | {r['iou']:.4f} | {r['f1']:.4f} | {r['pq']:.4f} | "
      f"{r['tp']} / {r['fp']} / {r['fn']} |"
    )
  recall = {name: r["recall"] for name, r in rows.items()}
  first = next(iter(recall.values()))
  lines += [
    "",
    f"Recall of the {first['num_nuclei']} true test nuclei (matched at IoU > 0.5) by contrast "
    f"tertile and by touching a neighbour ({first['num_touching']} touch):",
    "",
    "| method | low contrast | middle | high | touching | isolated |",
    "|---|---|---|---|---|---|",
  ]
  for name, r in recall.items():
    lines.append(
      f"| {name} | {r['contrast_0']:.3f} | {r['contrast_1']:.3f} | {r['contrast_2']:.3f} | "
      f"{r['touching']:.3f} | {r['isolated']:.3f} |"
    )
  lines += ["", "Unmatched predicted instances (the FP column) by what lies under them:", ""]
  for name, r in rows.items():
    fp = r["false_positives"]
    lines.append(
      f"- {name}: {fp['fragment']} fragments of one true nucleus (split), "
      f"{fp['merge']} across several (merged), {fp['background']} on background."
    )
  unet, otsu = rows["U-Net"]["per_image_dice"], rows["Otsu"]["per_image_dice"]
  agrees = (
    "agrees with" if abs(test_record["dice"] - rows["U-Net"]["dice"]) < 1e-4 else "differs from"
  )
  lines += [
    "",
    f"Per image, Otsu's Dice beats the U-Net's on {int(np.sum(otsu > unet))} of {len(unet)} "
    f"test images. The loop's own test record (mean per-image Dice {test_record['dice']:.4f}, "
    f"IoU {test_record['iou']:.4f}) {agrees} the table's U-Net row.",
    "",
    explanation_line(why),
  ]
  return "\n".join(lines)


def explanation_line(why: dict[str, float]) -> str:
  """How local each explanation map is, and IG's completeness error, in a sentence."""
  shares = ", ".join(
    f"{k.removeprefix('near_')} {v:.1%}"
    for k, v in why.items()
    if k.startswith("near_") and k != "near_area"
  )
  return (
    f"Explanation of one predicted nucleus (test image 0): the share of each map within 3 px "
    f"of the nucleus (which covers {why['near_area']:.1%} of the image): {shares}. Integrated "
    f"Gradients' completeness error: {why['ig_completeness_error']:.2%} (64 steps)."
  )


def run(workdir: str, tiny: bool = False) -> dict:
  """Trains (or resumes), compares with the classical baseline on test, writes results.md,
  overlays.png and explanation.png to `workdir`.

  Returns:
    {"rows": {"U-Net": {...}, "Otsu": {...}}, "test": the loop's test record, "explanation"}.
  """
  s = settings(tiny)
  train, validation = sources.split_validation(load(s["config"], "train"), s["validation_fraction"])
  test = load(s["config"], "test")
  task = make_task(train, validation, test, s)
  start = time.perf_counter()
  state, history = fit(task, workdir, s, tiny)
  wall = time.perf_counter() - start
  rows = compare(state, task, test, s)
  if not tiny:
    draw_overlays(os.path.join(workdir, "overlays.png"), state, task)
  why = explain_one(os.path.join(workdir, "explanation.png"), state, task, test, s)
  info = {
    "num_test": len(test["input"]),
    "num_train": len(train["input"]),
    "num_validation": len(validation["input"]),
    "wall": wall,
  }
  markdown = results_markdown(rows, history["test"][-1], why, s, info)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown + "\n")
  print(markdown)
  return {"rows": rows, "test": history["test"][-1], "explanation": why}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="workdirs/nuclei_unet")
  parser.add_argument("--tiny", action="store_true", help="a few steps on the tiny config (tests)")
  args = parser.parse_args()
  run(args.workdir, args.tiny)


if __name__ == "__main__":
  main()
