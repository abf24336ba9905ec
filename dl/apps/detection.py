"""Object detection: CenterNet targets and loss, box decoding, NMS and mean average precision.

Boxes are [x_min, y_min, x_max, y_max] in pixels (x_max, y_max exclusive), as in
`dl.data` `synthetic_digit_boxes` and torchvision. The CenterNet pieces work with
`dl.models.CenterNet`, whose output at each grid cell is `num_classes` heat logits, then
(offset x, offset y, width, height) in grid cells.

Training: `centernet_targets` turns ground-truth boxes into a batch, `centernet_objective`
is a `dl` objective `(outputs, batch) -> (loss_B, metrics)` for `dl.task`.
Inference: `decode_centernet`, then `nms` (both in `detect`). Evaluation:
`mean_average_precision`; `MeanAveragePrecision` reports it at each evaluation of `dl.fit`,
so the checkpoint can be chosen by validation mAP:

  task = dl.task(model=dl.models.CenterNet(num_classes=10), objective=centernet_objective,
                 optimizer=optax.adam(1e-3), train=train, eval=validation, test=test)
  hook = MeanAveragePrecision(task.model, {"eval": validation, "test": test}, num_classes=10)
  dl.fit(task, workdir, hooks=[hook], best_metric="map", best_mode="max")
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dl.data.batches import padded_batches
from dl.models.adapters import Model, as_model
from dl.training.protocols import Hook

INTERPOLATIONS = ("all_point", "coco_101")
_FOCAL_ALPHA, _FOCAL_BETA = 2.0, 4.0
_SIZE_WEIGHT = 0.1


def box_area(boxes_Nx4):
  """Areas of [x0, y0, x1, y1] boxes (numpy or jax arrays)."""
  return (boxes_Nx4[..., 2] - boxes_Nx4[..., 0]) * (boxes_Nx4[..., 3] - boxes_Nx4[..., 1])


def box_iou(boxes_Nx4, boxes_Mx4):
  """Intersection over union of every pair, (N, M); works on numpy and jax arrays.

  Args:
    boxes_Nx4: N boxes [x0, y0, x1, y1].
    boxes_Mx4: M boxes [x0, y0, x1, y1].

  Returns:
    (N, M) IoU; 0 where both boxes are empty.
  """
  xp = jnp if isinstance(boxes_Nx4, jax.Array) or isinstance(boxes_Mx4, jax.Array) else np
  lo_NxMx2 = xp.maximum(boxes_Nx4[:, None, :2], boxes_Mx4[None, :, :2])
  hi_NxMx2 = xp.minimum(boxes_Nx4[:, None, 2:], boxes_Mx4[None, :, 2:])
  inter_NxM = xp.prod(xp.clip(hi_NxMx2 - lo_NxMx2, 0, None), axis=-1)
  union_NxM = box_area(boxes_Nx4)[:, None] + box_area(boxes_Mx4)[None, :] - inter_NxM
  return inter_NxM / xp.maximum(union_NxM, 1e-12)


def nms(
  boxes_Kx4: jax.Array,
  scores_K: jax.Array,
  iou_threshold: float = 0.5,
  classes_K: jax.Array | None = None,
) -> jax.Array:
  """Greedy non-maximum suppression with fixed shapes (jittable, vmappable).

  Boxes are visited from the highest score down; a box is kept unless a kept box with a
  higher score (of the same class, when `classes_K` is given) overlaps it by IoU above
  `iou_threshold`.

  Args:
    boxes_Kx4: candidate boxes [x0, y0, x1, y1].
    scores_K: their scores.
    iou_threshold: overlaps above this suppress the lower-scored box.
    classes_K: class ids; None suppresses across classes.

  Returns:
    keep_K: bool mask over the candidates, in their original order.
  """
  num = scores_K.shape[0]
  order_K = jnp.argsort(-scores_K, stable=True)
  boxes_Kx4 = jnp.asarray(boxes_Kx4)[order_K]
  overlaps_KxK = box_iou(boxes_Kx4, boxes_Kx4) > iou_threshold
  if classes_K is not None:
    sorted_classes_K = jnp.asarray(classes_K)[order_K]
    overlaps_KxK &= sorted_classes_K[:, None] == sorted_classes_K[None, :]
  later_KxK = jnp.arange(num)[None, :] > jnp.arange(num)[:, None]
  suppresses_KxK = overlaps_KxK & later_KxK

  def visit(i, keep_K):
    return keep_K & ~(suppresses_KxK[i] & keep_K[i])

  keep_sorted_K = jax.lax.fori_loop(0, num, visit, jnp.ones((num,), bool))
  return jnp.zeros((num,), bool).at[order_K].set(keep_sorted_K)


def centernet_targets(
  boxes_BxMx4: np.ndarray,
  classes_BxM: np.ndarray,
  image_hw: tuple[int, int],
  num_classes: int,
  stride: int = 4,
) -> dict[str, np.ndarray]:
  """Training targets on the stride-`stride` grid for padded ground-truth boxes.

  Each object puts a Gaussian bump (peak 1 at its centre cell, standard deviations a
  sixth of its width and height) on its class's heat map, and its centre offset and size
  (in grid cells) at its centre cell.

  Args:
    boxes_BxMx4: up to M boxes per image, in pixels.
    classes_BxM: their classes; negative for padding rows.
    image_hw: the image height and width in pixels.
    num_classes: heat-map channels.
    stride: the model's downsampling factor.

  Returns:
    {"label": heat (B, H, W, num_classes) float32, "box": (B, H, W, 4) float32,
      "center": (B, H, W) float32 1 at object centres}, H, W = image_hw // stride.
  """
  grid_h, grid_w = image_hw[0] // stride, image_hw[1] // stride
  b = boxes_BxMx4.shape[0]
  heat = np.zeros((b, grid_h, grid_w, num_classes), np.float32)
  box = np.zeros((b, grid_h, grid_w, 4), np.float32)
  center = np.zeros((b, grid_h, grid_w), np.float32)
  ys, xs = np.arange(grid_h)[:, None], np.arange(grid_w)[None, :]
  for i, j in zip(*np.nonzero(classes_BxM >= 0)):
    x0, y0, x1, y1 = boxes_BxMx4[i, j] / stride
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    col, row = min(int(cx), grid_w - 1), min(int(cy), grid_h - 1)
    sx, sy = max((x1 - x0) / 6, 0.5), max((y1 - y0) / 6, 0.5)
    bump = np.exp(-((xs - col) ** 2) / (2 * sx**2) - (ys - row) ** 2 / (2 * sy**2))
    c = classes_BxM[i, j]
    heat[i, :, :, c] = np.maximum(heat[i, :, :, c], bump)
    box[i, row, col] = (cx - col, cy - row, x1 - x0, y1 - y0)
    center[i, row, col] = 1.0
  return {"label": heat, "box": box, "center": center}


def centernet_objective(
  outputs_BxHxWxF: jax.Array, batch: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CenterNet's loss per example: focal loss on the heat map plus L1 on boxes at centres.

  The heat-map term is the penalty-reduced focal loss of CenterNet (alpha 2, beta 4); the
  box term is L1 on the centre offset plus 0.1 x L1 on the size; both are divided by the
  example's number of objects.

  Args:
    outputs_BxHxWxF: `dl.models.CenterNet` outputs, F = num_classes + 4.
    batch: `centernet_targets` keys "label", "box" and "center".

  Returns:
    loss_B and {"heat_loss": (B,), "box_loss": (B,)}.
  """
  heat_BxHxWxC = batch["label"]
  num_classes = heat_BxHxWxC.shape[-1]
  logits = outputs_BxHxWxF[..., :num_classes]
  p = jax.nn.sigmoid(logits)
  log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  positive = heat_BxHxWxC >= 1.0
  pos_term = (1 - p) ** _FOCAL_ALPHA * log_p
  neg_term = (1 - heat_BxHxWxC) ** _FOCAL_BETA * p**_FOCAL_ALPHA * log_not_p
  focal = -jnp.where(positive, pos_term, neg_term).sum(axis=(1, 2, 3))
  center_BxHxW = batch["center"]
  num_objects_B = jnp.maximum(center_BxHxW.sum(axis=(1, 2)), 1.0)
  error = jnp.abs(outputs_BxHxWxF[..., num_classes:] - batch["box"])
  weights_1x1x1x4 = jnp.array([[[[1.0, 1.0, _SIZE_WEIGHT, _SIZE_WEIGHT]]]])
  box_loss = (error * weights_1x1x1x4 * center_BxHxW[..., None]).sum(axis=(1, 2, 3))
  heat_loss_B, box_loss_B = focal / num_objects_B, box_loss / num_objects_B
  return heat_loss_B + box_loss_B, {"heat_loss": heat_loss_B, "box_loss": box_loss_B}


def decode_centernet(
  outputs_BxHxWxF: jax.Array, num_classes: int, *, stride: int = 4, top_k: int = 20
) -> dict[str, jax.Array]:
  """The `top_k` highest heat-map peaks of each image as scored, classed boxes (jittable).

  A peak is a cell whose score is the maximum of its 3x3 neighbourhood in its class.

  Args:
    outputs_BxHxWxF: `dl.models.CenterNet` outputs.
    num_classes: heat-map channels.
    stride: the model's downsampling factor.
    top_k: candidates per image.

  Returns:
    {"boxes": (B, K, 4) pixels, "scores": (B, K) in [0, 1], "classes": (B, K) int32}.
  """
  b, h, w, _ = outputs_BxHxWxF.shape
  heat = jax.nn.sigmoid(outputs_BxHxWxF[..., :num_classes])
  peak = heat == jax.lax.reduce_window(
    heat, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME"
  )
  scores_BxK, flat_BxK = jax.lax.top_k(jnp.where(peak, heat, 0.0).reshape(b, -1), top_k)
  cell_BxK, classes_BxK = flat_BxK // num_classes, flat_BxK % num_classes
  rows_BxK, cols_BxK = cell_BxK // w, cell_BxK % w
  box_BxHWx4 = outputs_BxHxWxF[..., num_classes:].reshape(b, h * w, 4)
  box_BxKx4 = jnp.take_along_axis(box_BxHWx4, cell_BxK[..., None], axis=1)
  cx = cols_BxK + box_BxKx4[..., 0]
  cy = rows_BxK + box_BxKx4[..., 1]
  half_w, half_h = box_BxKx4[..., 2] / 2, box_BxKx4[..., 3] / 2
  boxes = jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1) * stride
  return {"boxes": boxes, "scores": scores_BxK, "classes": classes_BxK.astype(jnp.int32)}


def _match(det_boxes, det_scores, gt_boxes, iou_threshold):
  """True-positive flags of one image's detections of one class, greedy by score.

  Each detection, highest score first, takes the unmatched ground truth it overlaps most
  with IoU >= the threshold (the COCO rule, as in pycocotools).
  """
  order = np.argsort(-det_scores, kind="mergesort")
  tp = np.zeros(len(order), bool)
  if not len(gt_boxes):
    return det_scores[order], tp
  iou = box_iou(det_boxes[order], gt_boxes)
  taken = np.zeros(len(gt_boxes), bool)
  for d in range(len(order)):
    candidates = np.where(taken, -1.0, iou[d])
    best = int(np.argmax(candidates))
    if candidates[best] >= iou_threshold:
      taken[best], tp[d] = True, True
  return det_scores[order], tp


def _precision_recall(scores, tp, num_gt):
  """Precision and recall after each detection, in descending score order."""
  order = np.argsort(-scores, kind="mergesort")
  tps = np.cumsum(tp[order])
  fps = np.cumsum(~tp[order])
  return tps / (tps + fps + np.spacing(1)), tps / num_gt


def average_precision(precision: np.ndarray, recall: np.ndarray, interpolation: str) -> float:
  """Area under the interpolated precision-recall curve.

  Args:
    precision: precision after each detection, in descending score order.
    recall: recall after each detection.
    interpolation: "all_point" (PASCAL VOC 2010+: precision made monotone, summed over
      every recall step) or "coco_101" (COCO: the monotone precision read at the 101
      recall levels 0, 0.01, ..., 1, as pycocotools does).

  Returns:
    The average precision in [0, 1].
  """
  envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
  if interpolation == "all_point":
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_steps * envelope))
  if interpolation == "coco_101":
    levels = np.linspace(0.0, 1.0, 101)
    index = np.searchsorted(recall, levels, side="left")
    padded = np.concatenate([envelope, [0.0]])
    return float(np.mean(padded[np.minimum(index, len(envelope))]))
  raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}.")


def mean_average_precision(
  detections: Sequence[dict[str, np.ndarray]],
  ground_truths: Sequence[dict[str, np.ndarray]],
  *,
  iou_threshold: float = 0.5,
  interpolation: str = "all_point",
) -> dict[str, float | dict[int, float]]:
  """Mean over classes of the average precision at one IoU threshold (mAP@0.5 by default).

  Detections are matched per image and class (`_match`: highest score first, each to the
  unmatched ground truth it overlaps most, IoU >= threshold); all images' detections of a
  class are then ranked by score. Classes without ground truth are left out of the mean.
  With `interpolation="coco_101"` the result equals pycocotools' AP at that IoU (area
  "all", as long as no image has more than 100 detections of a class).

  Args:
    detections: per image {"boxes": (D, 4), "scores": (D,), "classes": (D,)}.
    ground_truths: per image {"boxes": (G, 4), "classes": (G,)}.
    iou_threshold: the IoU a detection needs to count as a hit.
    interpolation: "all_point" (PASCAL VOC 2010+) or "coco_101"; see `average_precision`.

  Returns:
    {"map": the mean, "ap": {class: average precision}}.
  """
  if len(detections) != len(ground_truths):
    raise ValueError(
      f"need one detection entry per image: {len(detections)} detections for "
      f"{len(ground_truths)} images of ground truth."
    )
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}.")
  classes = sorted({int(c) for gt in ground_truths for c in np.asarray(gt["classes"])})
  ap = {c: _class_ap(detections, ground_truths, c, iou_threshold, interpolation) for c in classes}
  return {"map": float(np.mean(list(ap.values()))) if ap else 0.0, "ap": ap}


def _class_ap(detections, ground_truths, cls, iou_threshold, interpolation) -> float:
  """Average precision of one class over all images."""
  all_scores, all_tp, num_gt = [], [], 0
  for det, gt in zip(detections, ground_truths):
    gt_boxes = np.asarray(gt["boxes"], np.float64)[np.asarray(gt["classes"]) == cls]
    mine = np.asarray(det["classes"]) == cls
    det_boxes = np.asarray(det["boxes"], np.float64)[mine].reshape(-1, 4)
    scores, tp = _match(
      det_boxes, np.asarray(det["scores"], np.float64)[mine], gt_boxes, iou_threshold
    )
    all_scores.append(scores)
    all_tp.append(tp)
    num_gt += len(gt_boxes)
  precision, recall = _precision_recall(np.concatenate(all_scores), np.concatenate(all_tp), num_gt)
  return average_precision(precision, recall, interpolation)


def ground_truths(boxes_NxMx4: np.ndarray, classes_NxM: np.ndarray) -> list[dict[str, np.ndarray]]:
  """Per image {"boxes": (G, 4), "classes": (G,)}: the padded rows whose class is >= 0."""
  boxes_NxMx4, classes_NxM = np.asarray(boxes_NxMx4), np.asarray(classes_NxM)
  real_NxM = classes_NxM >= 0
  return [
    {"boxes": boxes_NxMx4[i][real_NxM[i]], "classes": classes_NxM[i][real_NxM[i]]}
    for i in range(len(real_NxM))
  ]


def detect(
  state: Any,
  model: Any,
  images_NxHxWxC: np.ndarray,
  num_classes: int,
  *,
  top_k: int = 20,
  iou_threshold: float = 0.5,
  min_score: float = 0.01,
  batch_size: int = 256,
) -> list[dict[str, np.ndarray]]:
  """Detections of a CenterNet-style model: decoded peaks that survive per-class NMS.

  Args:
    state: a trained state (`params`, `model_state`) of one model, not an ensemble.
    model: `dl.models.CenterNet` (or `dl.Linen` of it) reading "input".
    images_NxHxWxC: model-ready images.
    num_classes: heat-map channels.
    top_k: candidate peaks per image (`decode_centernet`).
    iou_threshold: per-class NMS threshold (`nms`).
    min_score: detections scoring lower are dropped.
    batch_size: images per compiled call (the last batch is padded).

  Returns:
    Per image {"boxes": (D, 4) pixels, "scores": (D,), "classes": (D,)}.
  """
  if np.ndim(state.step):
    raise ValueError(
      f"detect takes one model's state; got an ensemble of {np.shape(state.step)[0]} members. "
      "Pick one with jax.tree.map(lambda x: x[i], state)."
    )
  run = _detector(as_model(model), num_classes, top_k, iou_threshold)
  n = len(images_NxHxWxC)
  detections = []
  for batch in padded_batches({"input": images_NxHxWxC}, min(batch_size, n)):
    decoded, keep = jax.tree.map(np.asarray, run(state.params, state.model_state, batch))
    keep = keep & (decoded["scores"] >= min_score)
    for i in np.flatnonzero(batch["mask"]):
      detections.append({k: v[i][keep[i]] for k, v in decoded.items()})
  return detections


@functools.cache
def _detector(model: Model, num_classes: int, top_k: int, iou_threshold: float):
  """jit of model -> `decode_centernet` -> per-class `nms` (keep mask) for a batch."""

  def run(params, model_state, batch):
    outputs, _ = model.apply(params, model_state, {"input": batch["input"]}, train=False)
    decoded = decode_centernet(outputs, num_classes, top_k=top_k)
    suppress = functools.partial(nms, iou_threshold=iou_threshold)
    keep = jax.vmap(suppress)(decoded["boxes"], decoded["scores"], classes_K=decoded["classes"])
    return decoded, keep

  return jax.jit(run)


def map_metrics(
  detections: Sequence[dict[str, np.ndarray]],
  truths: Sequence[dict[str, np.ndarray]],
  iou_threshold: float = 0.5,
) -> dict[str, float]:
  """{"map": all-point mAP, "map_coco_101": COCO's 101-point mAP, "ap_<class>": all-point AP}."""
  all_point = mean_average_precision(detections, truths, iou_threshold=iou_threshold)
  coco = mean_average_precision(
    detections, truths, iou_threshold=iou_threshold, interpolation="coco_101"
  )
  per_class = {f"ap_{c}": ap for c, ap in all_point["ap"].items()}
  return {"map": all_point["map"], "map_coco_101": coco["map"], **per_class}


class MeanAveragePrecision(Hook):
  """A `dl.fit` hook: the mAP of a CenterNet-style model at each evaluation of a split.

  Adds `map_metrics` ("map", "map_coco_101", "ap_<class>") to the "eval" (validation) and
  "test" records of the splits in `data`, so `best_metric="map"` chooses the checkpoint by
  validation mAP, and the test record holds the test mAP of that checkpoint.

  Args:
    model: the detector (`dl.models.CenterNet` or `dl.Linen` of it).
    data: {split: {"input": model-ready images, "boxes": (N, M, 4) padded boxes in pixels,
      "classes": (N, M), -1 for padding}}, for "eval" and/or "test".
    num_classes: heat-map channels.
    top_k: as in `detect`.
    iou_threshold: as in `detect`.
    min_score: as in `detect`.
    batch_size: as in `detect`.
  """

  def __init__(
    self,
    model: Any,
    data: Mapping[str, Mapping[str, np.ndarray]],
    num_classes: int,
    *,
    top_k: int = 20,
    iou_threshold: float = 0.5,
    min_score: float = 0.01,
    batch_size: int = 256,
  ):
    for split, arrays in data.items():
      missing = {"input", "boxes", "classes"} - set(arrays)
      if missing:
        raise ValueError(
          f"data[{split!r}] needs 'input', 'boxes' and 'classes'; it lacks {sorted(missing)}."
        )
    self.model = as_model(model)
    self.data = dict(data)
    self.truths = {split: ground_truths(a["boxes"], a["classes"]) for split, a in data.items()}
    self.num_classes = num_classes
    self.options = dict(
      top_k=top_k, iou_threshold=iou_threshold, min_score=min_score, batch_size=batch_size
    )

  def on_eval(self, state: Any, step: int, split: str) -> dict[str, float]:
    """mAP of `state` on `split`'s images, or {} for a split without data here."""
    del step
    if split not in self.data:
      return {}
    images = self.data[split]["input"]
    detections = detect(state, self.model, images, self.num_classes, **self.options)
    return map_metrics(detections, self.truths[split], self.options["iou_threshold"])
