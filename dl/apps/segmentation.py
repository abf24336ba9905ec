"""Semantic and instance segmentation: Dice and IoU, a cross-entropy + soft Dice objective,
instance matching, classical baselines, and explanations of one segment.

Masks are per pixel: a semantic mask holds class ids (0 = background), an instance mask
holds 0 for background and 1..N for N objects. The model is any network with per-pixel
logits, e.g. `dl.models.UNet`:

  task = dl.task(model=dl.models.UNet(num_classes=2), objective=segmentation_objective(),
                 optimizer=optax.adam(1e-3), train={"input": x_BxHxWx1, "label": m_BxHxW})
  state, history = dl.fit(task, workdir, num_steps=1000, batch_size=16)

Classical baselines (`otsu_masks`, `watershed_instances`) need scikit-image
(`pip install scikit-image`).
"""

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dl.core.objectives import Objective

_SMOOTH = 1.0  # Soft Dice's additive smoothing, in pixels: an empty class scores ~1, not 0/0.
_INSTALL = "pip install scikit-image"


def dice(pred_BxHxW, true_BxHxW) -> np.ndarray | jax.Array:
  """Per-image Dice coefficient 2|P & T| / (|P| + |T|) of two binary masks.

  Works on numpy and jax arrays (the result is of the same kind).

  Args:
    pred_BxHxW: predicted masks (bool, or anything where nonzero is foreground).
    true_BxHxW: true masks, same shape.

  Returns:
    (B,) float32 in [0, 1]: 1 for a perfect prediction, 0 when the masks do not overlap
    (an empty prediction of a non-empty mask); 1 when both are empty.
  """
  inter_B, sizes_B = _overlap(pred_BxHxW, true_BxHxW)
  xp = _namespace(pred_BxHxW, true_BxHxW)
  return xp.where(sizes_B > 0, 2.0 * inter_B / xp.maximum(sizes_B, 1.0), 1.0).astype(xp.float32)


def iou(pred_BxHxW, true_BxHxW) -> np.ndarray | jax.Array:
  """Per-image intersection over union |P & T| / |P | T| (Jaccard) of two binary masks.

  Args and returns as for `dice` (IoU = Dice / (2 - Dice)).
  """
  inter_B, sizes_B = _overlap(pred_BxHxW, true_BxHxW)
  xp = _namespace(pred_BxHxW, true_BxHxW)
  union_B = sizes_B - inter_B
  return xp.where(union_B > 0, inter_B / xp.maximum(union_B, 1.0), 1.0).astype(xp.float32)


def _namespace(*arrays):
  """jax.numpy if any array is a jax array, else numpy."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _overlap(pred_BxHxW, true_BxHxW):
  """(B,) |P & T| and |P| + |T| as float32."""
  if pred_BxHxW.shape != true_BxHxW.shape:
    raise ValueError(
      f"predicted and true masks must have the same shape; got {pred_BxHxW.shape} and "
      f"{true_BxHxW.shape}."
    )
  xp = _namespace(pred_BxHxW, true_BxHxW)
  p = xp.reshape(pred_BxHxW != 0, (pred_BxHxW.shape[0], -1)).astype(xp.float32)
  t = xp.reshape(true_BxHxW != 0, (true_BxHxW.shape[0], -1)).astype(xp.float32)
  return xp.sum(p * t, axis=1), xp.sum(p, axis=1) + xp.sum(t, axis=1)


def soft_dice(probs_BxHxWxK: jax.Array, labels_BxHxW: jax.Array) -> jax.Array:
  """(B, K) soft Dice of each class: (2 sum(p t) + s) / (sum(p) + sum(t) + s), s = 1 pixel.

  Args:
    probs_BxHxWxK: per-pixel class probabilities.
    labels_BxHxW: integer class ids.
  """
  onehot_BxHxWxK = jax.nn.one_hot(labels_BxHxW, probs_BxHxWxK.shape[-1], dtype=jnp.float32)
  inter_BxK = jnp.sum(probs_BxHxWxK * onehot_BxHxWxK, axis=(1, 2))
  sizes_BxK = jnp.sum(probs_BxHxWxK, axis=(1, 2)) + jnp.sum(onehot_BxHxWxK, axis=(1, 2))
  return (2.0 * inter_BxK + _SMOOTH) / (sizes_BxK + _SMOOTH)


def _segmentation(
  logits_BxHxWxK: jax.Array, batch: Mapping[str, jax.Array], *, dice_weight: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-pixel cross-entropy (mean over pixels) + dice_weight * (1 - soft Dice), per image.

  Soft Dice is averaged over the foreground classes 1..K-1. Metrics: hard Dice and IoU of
  the predicted foreground (argmax > 0) against the true one, and pixel accuracy.
  """
  labels_BxHxW = _labels(logits_BxHxWxK, batch)
  ce_BxHxW = optax.softmax_cross_entropy_with_integer_labels(logits_BxHxWxK, labels_BxHxW)
  probs_BxHxWxK = jax.nn.softmax(logits_BxHxWxK, axis=-1)
  soft_B = jnp.mean(soft_dice(probs_BxHxWxK, labels_BxHxW)[:, 1:], axis=1)
  loss_B = jnp.mean(ce_BxHxW, axis=(1, 2)) + dice_weight * (1.0 - soft_B)
  predicted_BxHxW = jnp.argmax(logits_BxHxWxK, axis=-1)
  correct_BxHxW = (predicted_BxHxW == labels_BxHxW).astype(jnp.float32)
  return loss_B, {
    "dice": dice(predicted_BxHxW, labels_BxHxW),
    "iou": iou(predicted_BxHxW, labels_BxHxW),
    "pixel_accuracy": jnp.mean(correct_BxHxW, axis=(1, 2)),
    "soft_dice": soft_B,
  }


def _labels(logits_BxHxWxK: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
  """batch["label"] as int32 (B, H, W), checked against the logits."""
  if "label" not in batch:
    raise ValueError(f"segmentation reads batch['label']; the batch has keys {sorted(batch)}.")
  labels = batch["label"]
  if logits_BxHxWxK.ndim != 4 or labels.shape != logits_BxHxWxK.shape[:3]:
    raise ValueError(
      f"segmentation needs logits (B, H, W, K) and batch['label'] (B, H, W) of class ids; "
      f"got logits {logits_BxHxWxK.shape} and labels {labels.shape}."
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f"segmentation needs integer class ids in batch['label']; got dtype {labels.dtype}."
    )
  return labels.astype(jnp.int32)


def _probabilities(logits_BxHxWxK: jax.Array) -> jax.Array:
  return jax.nn.softmax(logits_BxHxWxK, axis=-1)


def segmentation_objective(dice_weight: float = 1.0) -> Objective:
  """Per-pixel cross-entropy + soft Dice, for `dl.task(objective=...)`.

  The loss of an image is the mean over its pixels of the softmax cross-entropy plus
  `dice_weight` times (1 - its soft Dice, averaged over the foreground classes 1..K-1).
  Cross-entropy gives every pixel a gradient; soft Dice weighs the small foreground as
  much as the large background (Milletari et al. 2016).

  Args:
    dice_weight: weight of the soft Dice term (0: cross-entropy alone).

  Returns:
    An `Objective` for logits (B, H, W, K) and batch["label"] (B, H, W) class ids. Its
    metrics, per image: "dice" and "iou" of the predicted foreground (any class > 0),
    "pixel_accuracy", "soft_dice". Validation Dice chooses the best checkpoint;
    predictions are per-pixel softmax probabilities.
  """
  return Objective(
    functools.partial(_segmentation, dice_weight=dice_weight),
    metrics=("dice", "iou", "pixel_accuracy", "soft_dice"),
    select="dice",
    predictions=_probabilities,
    classes="label",
  )


def normalize(images_BxHxW: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
  """Each image scaled so that its `low` and `high` percentiles map to 0 and 1 (float32).

  Microscopes differ in exposure and gain; percentile scaling (as in CSBDeep, StarDist,
  Cellpose) makes images from different ones comparable. Works on any (B, ...) shape.
  """
  x = np.asarray(images_BxHxW, np.float32)
  axes = tuple(range(1, x.ndim))
  lo = np.percentile(x, low, axis=axes, keepdims=True)
  hi = np.percentile(x, high, axis=axes, keepdims=True)
  return (x - lo) / np.maximum(hi - lo, 1e-6)


# Instances ------------------------------------------------------------------------------------


def match_instances(
  true_HxW: np.ndarray, pred_HxW: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
  """Matches predicted to true instances by IoU > `threshold` (>= 0.5: each pairs at most once).

  Args:
    true_HxW: true instance ids (0 background).
    pred_HxW: predicted instance ids (0 background).
    threshold: IoU above which a pair matches; must be >= 0.5 so that matches are unique.

  Returns:
    {"tp", "fp", "fn": counts, "matched_iou": the sum of the matched pairs' IoU}.
  """
  if threshold < 0.5:
    raise ValueError(f"threshold must be >= 0.5 for unique matches; got {threshold}.")
  iou_TxP = instance_ious(true_HxW, pred_HxW)
  matched = iou_TxP > threshold
  tp = int(matched.sum())
  return {
    "tp": tp,
    "fp": iou_TxP.shape[1] - tp,
    "fn": iou_TxP.shape[0] - tp,
    "matched_iou": float(iou_TxP[matched].sum()),
  }


def instance_ious(true_HxW: np.ndarray, pred_HxW: np.ndarray) -> np.ndarray:
  """(T, P) IoU of every true instance with every predicted one (ids are relabelled 1..)."""
  _, t = np.unique(true_HxW, return_inverse=True)
  _, p = np.unique(pred_HxW, return_inverse=True)
  t = t.reshape(-1) + (0 if true_HxW.min() == 0 else 1)  # 0 stays background
  p = p.reshape(-1) + (0 if pred_HxW.min() == 0 else 1)
  joint = np.zeros((t.max() + 1, p.max() + 1), np.int64)
  np.add.at(joint, (t, p), 1)
  inter_TxP = joint[1:, 1:]
  union_TxP = joint[1:].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - inter_TxP
  return inter_TxP / np.maximum(union_TxP, 1)


def instance_scores(true_NxHxW: np.ndarray, pred_NxHxW: np.ndarray, threshold: float = 0.5):
  """Instance F1 and panoptic quality over a set of images (counts pooled over images).

  F1 = 2 TP / (2 TP + FP + FN) with a match at IoU > `threshold`; panoptic quality
  (Kirillov et al. 2019) = (sum of matched IoUs) / (TP + FP / 2 + FN / 2).

  Returns:
    {"f1", "pq", "precision", "recall", "tp", "fp", "fn"}.
  """
  counts = {"tp": 0, "fp": 0, "fn": 0, "matched_iou": 0.0}
  for t, p in zip(true_NxHxW, pred_NxHxW, strict=True):
    for key, value in match_instances(t, p, threshold).items():
      counts[key] += value
  tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
  return {
    "f1": 2 * tp / max(2 * tp + fp + fn, 1),
    "pq": counts["matched_iou"] / max(tp + fp / 2 + fn / 2, 1e-12),
    "precision": tp / max(tp + fp, 1),
    "recall": tp / max(tp + fn, 1),
    "tp": tp,
    "fp": fp,
    "fn": fn,
  }


# Classical baselines (scikit-image) -------------------------------------------------------------


def _skimage():
  """Imports the scikit-image modules the baselines use, or says how to install them."""
  try:
    import skimage.feature  # pylint: disable=import-outside-toplevel
    import skimage.filters  # pylint: disable=import-outside-toplevel
    import skimage.morphology  # pylint: disable=import-outside-toplevel
    import skimage.segmentation  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      f"the classical segmentation baselines need scikit-image; install it with: {_INSTALL}"
    ) from e
  return skimage


def otsu_masks(images_BxHxW: np.ndarray, sigma: float = 1.0, min_size: int = 8) -> np.ndarray:
  """Classical foreground masks: Gaussian smoothing, Otsu's global threshold per image,
  holes filled, objects under `min_size` pixels removed.

  Args:
    images_BxHxW: grey-scale images, bright objects on a dark background.
    sigma: of the Gaussian smoothing, in pixels (0: none).
    min_size: smaller connected objects are dropped.

  Returns:
    (B, H, W) bool masks.
  """
  skimage = _skimage()
  from scipy import ndimage  # pylint: disable=import-outside-toplevel

  masks = []
  for image in np.asarray(images_BxHxW, np.float32):
    smooth = skimage.filters.gaussian(image, sigma=sigma) if sigma else image
    mask = ndimage.binary_fill_holes(smooth > skimage.filters.threshold_otsu(smooth))
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    masks.append((sizes >= min_size)[labels] & mask)
  return np.stack(masks)


def watershed_instances(masks_BxHxW: np.ndarray, min_distance: int = 3) -> np.ndarray:
  """Splits foreground masks into instances: a marker at each local maximum of the distance
  to the background (at least `min_distance` pixels apart), grown by watershed on the
  negated distance inside the mask.

  Returns:
    (B, H, W) int32 instance ids (0 background).
  """
  skimage = _skimage()
  from scipy import ndimage  # pylint: disable=import-outside-toplevel

  out = []
  for mask in np.asarray(masks_BxHxW, bool):
    distance = ndimage.distance_transform_edt(mask)
    components, _ = ndimage.label(mask)
    peaks = skimage.feature.peak_local_max(
      distance, min_distance=min_distance, labels=components, exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    out.append(skimage.segmentation.watershed(-distance, markers, mask=mask).astype(np.int32))
  return np.stack(out) if out else np.zeros(np.shape(masks_BxHxW), np.int32)


# Explanations -------------------------------------------------------------------------------------


class RegionLogits(nn.Module):
  """A segmentation model seen as a classifier of one region, so that `dl.trust.explain` applies.

  Its output for class k is the sum of the model's class-k logits over the pixels of a region
  (Seg-Grad-CAM, Vinogradova et al. 2020): explaining it says which input pixels (Integrated
  Gradients) or feature-map locations (Grad-CAM) make the model call that region class k.
  The region is a variable collection, so one jitted explanation serves any region:

    wrapped = RegionLogits(unet)
    variables = {"params": {"model": params}, "region": {"mask": region_BxHxW}}
    ig = dl.trust.explain.integrated_gradients(wrapped, variables, x, jnp.ones(B, int))
    cam = dl.trust.explain.grad_cam(wrapped, variables, x, jnp.ones(B, int), layer="model/up_0")

  Attributes:
    model: a module whose `apply(variables, x, train=False)` gives (B, H, W, K) logits.
  """

  model: nn.Module

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False) -> jax.Array:
    """Returns (B, K): each class's logits summed over `variables["region"]["mask"]`."""
    logits_BxHxWxK = self.model(x_BxHxWxC, train=train)
    region = self.variable("region", "mask", jnp.ones, logits_BxHxWxK.shape[:3], jnp.float32)
    return jnp.einsum("bhwk,bhw->bk", logits_BxHxWxK, region.value)


def region_variables(params: Any, region_BxHxW: np.ndarray, model_state: Any = None) -> dict:
  """The variables of `RegionLogits(model)` for a trained model's params and a region."""
  variables = {"params": {"model": params}, "region": {"mask": jnp.asarray(region_BxHxW)}}
  for collection, values in (model_state or {}).items():
    variables[collection] = {"model": values}
  return variables
