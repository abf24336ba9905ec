"""Segmentation: the SYNTHETIC nuclei builder's masks, Dice and IoU, instance matching, the
classical baselines, the U-Net, explanations of one segment, and exact resume after kill -9."""

import functools
import importlib.util
import pathlib
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import kill
import numpy as np
import pytest
import skimage.draw

import dl
from dl.apps import segmentation
from dl.data.builders import nuclei
from dl.trust import explain

TINY = nuclei.SyntheticNuclei.builder_configs["tiny"]


def test_nucleus_outline_is_the_ellipse_scikit_image_draws():
  rng = np.random.default_rng(0)
  for _ in range(10):
    a = rng.uniform(3, 10)
    n = nuclei.Nucleus(
      rng.uniform(5, 27),
      rng.uniform(5, 27),
      a,
      a * rng.uniform(0.5, 1),
      rng.uniform(0, np.pi),
      np.zeros((0, 3)),
    )
    reference = np.zeros((32, 32), bool)
    rows, cols = skimage.draw.ellipse(n.y, n.x, n.b, n.a, shape=(32, 32), rotation=n.angle)
    reference[rows, cols] = True
    assert np.sum(nuclei.shape_mask(n, 32) != reference) <= 2


def test_masks_are_the_painted_shapes_and_the_image_shows_them(data_dir):
  arrays = dl.data.load("synthetic_nuclei/tiny", "test", data_dir=data_dir)
  assert arrays["image"].shape == (TINY.num_test, 32, 32, 1)
  for i in range(TINY.num_test):
    instances, image = arrays["instances"][i], arrays["image"][i, :, :, 0]
    np.testing.assert_array_equal(arrays["label"][i], instances > 0)
    assert arrays["num_nuclei"][i] == instances.max() >= 1
    # The same seed draws the same shapes: paint them again, painter's order, independently.
    shapes = nuclei.sample_nuclei(np.random.default_rng([2, i]), TINY)
    top = np.zeros((32, 32), int)
    for k, shape in enumerate(shapes, start=1):
      top[nuclei.shape_mask(shape, 32)] = k
    kept = [k for k in range(1, len(shapes) + 1) if np.sum(top == k) >= nuclei.MIN_PIXELS]
    assert instances.max() == len(kept)
    for new_id, k in enumerate(kept, start=1):
      np.testing.assert_array_equal(instances == new_id, top == k)
    dropped = (top > 0) & ~np.isin(top, kept)
    assert not instances[dropped].any()
    assert image[instances > 0].mean() > image[instances == 0].mean() + 10  # nuclei glow
  again = nuclei.make_example(np.random.default_rng([2, 0]), TINY)
  np.testing.assert_array_equal(again["image"], arrays["image"][0])  # deterministic
  description = nuclei.SyntheticNuclei.DESCRIPTION
  assert "SYNTHETIC" in description and "GENERATED" in description


def test_dice_and_iou_of_perfect_empty_and_partial_predictions():
  truth = np.zeros((1, 4, 4), np.int32)
  truth[0, :2, :2] = 1
  for xp in (np, jnp):
    t = xp.asarray(truth)
    assert float(segmentation.dice(t, t)[0]) == 1.0
    assert float(segmentation.iou(t, t)[0]) == 1.0
    assert float(segmentation.dice(xp.zeros_like(t), t)[0]) == 0.0
    assert float(segmentation.iou(xp.zeros_like(t), t)[0]) == 0.0
    half = xp.asarray(np.pad(truth[:, :1, :2], ((0, 0), (0, 3), (0, 2))))  # 2 of the 4 pixels
    assert float(segmentation.dice(half, t)[0]) == pytest.approx(4 / 6)
    assert float(segmentation.iou(half, t)[0]) == pytest.approx(2 / 4)
  assert segmentation.dice(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)))[0] == 1.0  # nothing to find
  with pytest.raises(ValueError, match=r"same shape; got \(1, 4, 4\) and \(1, 3, 3\)"):
    segmentation.dice(truth, np.zeros((1, 3, 3)))


def test_objective_is_low_for_confident_correct_logits_and_names_bad_labels():
  labels = np.zeros((2, 8, 8), np.int32)
  labels[:, 2:5, 2:6] = 1
  logits = 20.0 * np.eye(2, dtype=np.float32)[labels] - 10.0
  objective = jax.jit(segmentation.segmentation_objective())
  loss, metrics = objective(np.stack([logits[0], -logits[1]]), {"label": labels})
  assert loss.shape == (2,) and float(loss[0]) < 0.05 and float(loss[1]) > 10.0
  np.testing.assert_allclose(metrics["dice"], [1.0, 0.0])
  with pytest.raises(ValueError, match=r"labels \(2, 8\)"):
    objective(logits, {"label": labels[:, 0]})


def test_instance_matching_f1_and_panoptic_quality():
  truth = np.zeros((10, 10), np.int32)
  truth[0:4, 0:4], truth[6:10, 6:10], truth[0:2, 8:10] = 1, 2, 3
  pred = np.zeros_like(truth)
  pred[0:4, 0:4] = 7  # exact
  pred[6:10, 6:8] = 9  # half of nucleus 2: IoU 0.5, not a match
  pred[5, 0] = 4  # a false positive
  scores = segmentation.instance_scores(truth[None], pred[None])
  assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 2, 2)
  assert scores["f1"] == pytest.approx(2 / (2 + 2 + 2))
  assert scores["pq"] == pytest.approx(1.0 / (1 + 1 + 1))


def test_otsu_and_watershed_split_two_touching_discs():
  image = np.zeros((1, 40, 40), np.float32)
  for cy, cx in ((20, 12), (20, 27)):
    rows, cols = skimage.draw.disk((cy, cx), 8, shape=(40, 40))
    image[0, rows, cols] = 1.0
  image += np.random.default_rng(0).normal(0, 0.05, image.shape).astype(np.float32)
  mask = segmentation.otsu_masks(image)
  assert segmentation.dice(mask, image > 0.5)[0] > 0.95
  assert segmentation.watershed_instances(mask)[0].max() == 2


def test_upsample_is_a_stride_2_transposed_convolution():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 4))
  up = dl.models.unet.Upsample(6)
  variables = jax.tree.map(lambda v: v + 0.3, jax.jit(up.init)(jax.random.PRNGKey(1), x))
  kernel = variables["params"]["Dense_0"]["kernel"].reshape(4, 2, 2, 6).transpose(1, 2, 0, 3)
  conv_transpose = jax.jit(nn.ConvTranspose(6, (2, 2), strides=(2, 2)).apply)
  reference = conv_transpose(
    {"params": {"kernel": kernel[::-1, ::-1], "bias": variables["params"]["bias"]}}, x
  )
  np.testing.assert_allclose(jax.jit(up.apply)(variables, x), reference, atol=1e-5)


def test_unet_shapes_and_its_error():
  model = dl.models.UNet(num_classes=3, features=4, levels=2)
  x = jax.ShapeDtypeStruct((1, 16, 24, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)  # shapes only: no compile
  assert jax.eval_shape(model.apply, variables, x).shape == (1, 16, 24, 3)
  with pytest.raises(ValueError, match=r"divisible by 4; got shape \(1, 16, 18, 1\)"):
    jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 16, 18, 1), jnp.float32))


# A tiny U-Net on tiny SYNTHETIC nuclei, trained through dl.fit; the test kills it with
# SIGKILL and runs it again (the module is also imported to train the reference in-process).
SCRIPT = """
import sys

import numpy as np
import optax

import dl
from dl.apps import segmentation
from dl.data.builders import nuclei

CONFIG = dl.FitConfig(
  num_steps=60, batch_size=4, eval_every=30, checkpoint_every=20, log_every=10,
  progress=False, tensorboard=False,
)


def build():
  config = nuclei.SyntheticNuclei.builder_configs["tiny"]
  examples = [nuclei.make_example(np.random.default_rng([9, i]), config) for i in range(16)]
  arrays = {
    "input": segmentation.normalize(np.stack([e["image"] for e in examples])),
    "label": np.stack([e["label"] for e in examples]).astype(np.int32),
  }
  return dl.task(
    model=dl.models.UNet(features=4, levels=1),
    objective=segmentation.segmentation_objective(),
    optimizer=optax.adam(3e-3),
    train=arrays,
    validation_fraction=0.25,
  )


if __name__ == "__main__":
  dl.fit(build(), sys.argv[1], CONFIG)
"""


def test_unet_trains_through_fit_and_resumes_exactly_after_kill(tmp_path):
  script = tmp_path / "train_unet.py"
  script.write_text(SCRIPT)
  spec = importlib.util.spec_from_file_location("train_unet", script)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  killed = tmp_path / "killed"
  task = module.build()
  resume = functools.partial(dl.fit, task, str(killed), module.CONFIG)  # the script's own call
  command = [sys.executable, str(script), str(killed)]
  assert kill.kill_then_rerun(command, killed, 20, resume=resume) < 60
  full, history = dl.fit(task, str(tmp_path / "full"), module.CONFIG)
  resumed = dl.training.loop.restore(task, str(killed), module.CONFIG)
  assert int(resumed.step) == 60
  chex.assert_trees_all_equal(full, resumed)
  losses = [r["loss"] for r in history["train"]]
  assert losses[-1] < 0.6 * losses[0]  # it learns
  assert history["eval"][-1]["dice"] > 0.5, history["eval"]
  # One segment explained through dl.trust.explain: the U-Net as a classifier of that region.
  x = task.eval["input"][:1]
  region = task.eval["label"][:1].astype(np.float32)
  wrapped = segmentation.RegionLogits(task.model.module)
  variables = segmentation.region_variables(full.params, region, full.model_state)
  nucleus = jnp.ones((1,), jnp.int32)
  ig = explain.integrated_gradients(wrapped, variables, x, nucleus, num_steps=16)
  gap = explain.class_scores(wrapped, variables, x, nucleus) - explain.class_scores(
    wrapped, variables, 0 * x, nucleus
  )
  assert float(jnp.sum(ig)) == pytest.approx(float(gap[0]), rel=0.05)  # completeness
  cam = explain.grad_cam(wrapped, variables, x, nucleus, layer="model/bottleneck")
  assert cam.shape == (1, 32, 32) and float(cam.max()) == pytest.approx(1.0)


def test_nuclei_study_documents_its_command():
  path = pathlib.Path(__file__).parent.parent / "experiments" / "nuclei_unet.py"
  assert "python experiments/nuclei_unet.py --workdir workdirs/nuclei_unet" in path.read_text()
