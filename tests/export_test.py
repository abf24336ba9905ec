import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tiny_export import exported_cnn

import dl
from dl import export

# Reloads the export with jax and numpy only: no dl, no flax, no model code.
_RELOAD = textwrap.dedent(
  """
  import json, sys
  import jax, numpy as np
  directory, inputs_path, out_path = sys.argv[1:]
  spec = json.load(open(f"{directory}/input_spec.json"))
  pre = np.load(f"{directory}/preprocess.npz")
  exported = jax.export.deserialize(bytearray(open(f"{directory}/model.stablehlo", "rb").read()))
  x = np.load(inputs_path)
  assert x.dtype == spec["input_dtype"] and spec["preprocessing"]["kind"] == "scale"
  results = {}
  for n in (1, 50):
    x_n = np.asarray(x[:n], np.float32) / float(pre["divisor"])
    results[str(n)] = np.asarray(jax.nn.softmax(exported.call(x_n)))
  np.savez(out_path, **results)
  leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("dl", "flax", "optax"))
  assert not leaked, leaked
  """
)


def test_reload_without_model_code_matches_predict_at_two_batch_sizes(tmp_path):
  task, state, _, directory = exported_cnn()
  images = dl.data.load("digits", "test")["image"]
  np.save(tmp_path / "x.npy", images)
  out = tmp_path / "probs.npz"
  subprocess.run(
    [sys.executable, "-c", _RELOAD, directory, str(tmp_path / "x.npy"), str(out)], check=True
  )
  with np.load(out) as reloaded:
    for n in (1, 50):
      np.testing.assert_array_equal(reloaded[str(n)], dl.predict(task, state, images[:n]))
      assert reloaded[str(n)].shape == (n, 10)


def test_load_checks_inputs_and_matches_predict():
  task, state, _, directory = exported_cnn()
  model = export.load(directory)
  images = dl.data.load("digits", "test")["image"][:7]
  np.testing.assert_array_equal(model(images), dl.predict(task, state, images))
  assert model.class_names == [str(i) for i in range(10)]
  assert model.embed(images).shape == (7, 16)  # the CNN's hidden layer
  with pytest.raises(ValueError, match=r"shape \(batch, 8, 8, 1\); got \(7, 8, 8\)"):
    model(images[..., 0])
  with pytest.raises(ValueError, match="dtype uint8; got float32"):
    model(images.astype(np.float32))


def test_run_card_records_config_data_metrics_and_versions():
  task, _, workdir, directory = exported_cnn()
  with open(os.path.join(directory, "run_card.json")) as f:
    card = json.load(f)
  assert card["config"]["model"] == {"name": "cnn", "features": 4, "hidden": 16}
  assert card["data"]["name"] == "digits" and card["data"]["num_train_examples"] == 1437
  assert card["data"]["fingerprint"] == export.data_fingerprint(task.train)
  assert card["seeds"] == {"seed": 0} and card["step"] == 300
  last_eval = dl.read_history(os.path.join(workdir, "metrics.jsonl"))["eval"][-1]
  assert card["metrics"]["accuracy"] == last_eval["accuracy"] > 0.5
  assert card["versions"]["jax"] == __import__("jax").__version__
  assert card["export"]["verified_batch_sizes"] == [1, 50]


def test_run_card_carries_extra_slice_and_privacy_metrics(tmp_path):
  task, state, _, _ = exported_cnn()
  records = [
    {"split": "train", "step": 10, "loss": 1.0, "dp_epsilon": 0.5},
    {"split": "train", "step": 20, "loss": 0.9, "dp_epsilon": 0.8, "dp_delta": 1e-5},
    {"split": "eval", "step": 20, "loss": 0.7, "accuracy": 0.8, "f1": 0.75, "slice/even": 0.9},
  ]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  card = export.run_card(task, state, workdir=str(tmp_path))
  assert card["metrics"] == {"step": 20, "loss": 0.7, "accuracy": 0.8, "f1": 0.75}
  assert card["slice_metrics"] == {"slice/even": 0.9}
  assert card["privacy"] == {"dp_epsilon": 0.8, "dp_delta": 1e-5}


def test_data_fingerprint_changes_with_the_training_data():
  task, state, _, directory = exported_cnn()
  with open(os.path.join(directory, "run_card.json")) as f:
    exported_fingerprint = json.load(f)["data"]["fingerprint"]
  same = dl.build(task.config)
  assert export.run_card(same, state)["data"]["fingerprint"] == exported_fingerprint
  fewer = dl.build(dataclasses.replace(task.config, train_split="train[:90%]"))
  assert export.run_card(fewer, state)["data"]["fingerprint"] != exported_fingerprint
  pixels = same.train["input"].copy()
  pixels[0, 0, 0, 0] += 1 / 255
  one_pixel = dataclasses.replace(same, train={**same.train, "input": pixels})
  assert export.run_card(one_pixel, state)["data"]["fingerprint"] != exported_fingerprint


def test_load_names_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing model.stablehlo"):
    export.load(str(tmp_path))


def test_saved_model_without_tensorflow_is_a_clear_error(tmp_path):
  if importlib.util.find_spec("tensorflow"):
    pytest.skip("TensorFlow is installed: the SavedModel path is exercised instead")
  task, state, _, _ = exported_cnn()
  with pytest.raises(ImportError, match="needs TensorFlow"):
    export.export(task, state, str(tmp_path), saved_model=True)
  assert not os.listdir(tmp_path)
