import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tiny_config import tiny_config
from tiny_export import exported_cnn, exported_two_inputs, two_input_arrays

import dl
from dl.deploy import export, run_card

# Reloads exports with jax and numpy only: no dl, no flax, no model code. The spec says how
# to preprocess each input; the exported function takes them in the spec's order.
_RELOAD = textwrap.dedent(
  """
  import json, sys
  import jax, numpy as np

  def model_input(spec, pre, x):
    name, kind = spec["name"], spec["preprocessing"]["kind"]
    assert x.dtype == spec["dtype"], (x.dtype, spec)
    if kind == "scale":
      x = np.asarray(x, np.float32) / float(pre[name + "/divisor"])
    elif kind == "standardize":
      z = (np.asarray(x, np.float64) - pre[name + "/mean"]) / pre[name + "/std"]
      x = z.astype(np.float32)
    return np.asarray(x, spec["model_dtype"])  # "cast" and "none" only cast

  for directory, inputs_path, out_path in json.loads(sys.argv[1]):
    spec = json.load(open(f"{directory}/input_spec.json"))
    pre = np.load(f"{directory}/preprocess.npz")
    exported = jax.export.deserialize(bytearray(open(f"{directory}/model.stablehlo", "rb").read()))
    inputs = np.load(inputs_path)
    results = {}
    for n in (1, 50):
      args = [model_input(s, pre, inputs[s["name"]][:n]) for s in spec["inputs"]]
      results[str(n)] = np.asarray(exported.call(*args))
    np.savez(out_path, **results)
  leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("dl", "flax", "optax"))
  assert not leaked, leaked
  """
)


class _Mlp(nnx.Module):
  """An NNX model for digits: flatten, one hidden layer."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 16, rngs=rngs)
    self.out = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x_BxHxWxC):
    x_BxD = jnp.reshape(x_BxHxWxC, (x_BxHxWxC.shape[0], -1))
    return self.out(nnx.relu(self.hidden(x_BxD)))


def _exported_nnx(root) -> tuple:
  task = dl.task(
    model=dl.NNX(lambda rngs: _Mlp(rngs)),
    objective=dl.core.objectives.classification,
    optimizer=optax.adam(1e-2),
    train=("digits", "train"),
    test=("digits", "test"),
    class_names=tuple("0123456789"),
  )
  state, _ = dl.fit(
    task,
    f"{root}/run",
    num_steps=100,
    batch_size=32,
    log_every=50,
    progress=False,
    tensorboard=False,
  )
  export.export(task, state, f"{root}/export", batch_sizes=(1, 33), workdir=f"{root}/run")
  return task, state, f"{root}/export"


def test_reload_without_model_code_matches_predict_at_two_batch_sizes(tmp_path):
  jobs, expected = [], {}
  images = dl.data.load("digits", "test")["image"]
  pairs = two_input_arrays(50, seed=2)
  for name, (task, state, _, directory), inputs in (
    ("cnn", exported_cnn(), {"input": images}),
    ("two_inputs", exported_two_inputs(), {"user": pairs["user"], "item": pairs["item"]}),
  ):
    np.savez(tmp_path / f"{name}_x.npz", **inputs)
    jobs.append([directory, str(tmp_path / f"{name}_x.npz"), str(tmp_path / f"{name}_out.npz")])
    expected[name] = {
      n: dl.predict(task, state, {k: v[:n] for k, v in inputs.items()}) for n in (1, 50)
    }
  subprocess.run([sys.executable, "-c", _RELOAD, json.dumps(jobs)], check=True)
  for name in expected:
    with np.load(tmp_path / f"{name}_out.npz") as reloaded:
      for n in (1, 50):
        np.testing.assert_array_equal(reloaded[str(n)], expected[name][n])
  assert expected["cnn"][50].shape == (50, 10) and expected["two_inputs"][50].shape == (50,)


def test_load_checks_inputs_and_matches_predict():
  task, state, _, directory = exported_cnn()
  model = export.load(directory)
  images = dl.data.load("digits", "test")["image"][:7]
  np.testing.assert_array_equal(model(images), dl.predict(task, state, images))
  assert model.class_names == [str(i) for i in range(10)]
  assert model.embed(images).shape == (7, 16)  # the CNN's hidden layer
  with pytest.raises(ValueError, match=r"shape \(batch, 8, 8, 1\); got \(7, 8, 8\)"):
    model(images[..., 0])
  with pytest.raises(ValueError, match="dtype uint8 .*; got float32"):
    model(images.astype(np.float32))


def test_two_input_linen_model_with_its_own_loss_exports_exactly():
  task, state, workdir, directory = exported_two_inputs()
  model = export.load(directory)
  pairs = two_input_arrays(64, seed=3)
  inputs = {"user": pairs["user"], "item": pairs["item"]}
  np.testing.assert_array_equal(model(inputs), dl.predict(task, state, inputs))
  assert model(inputs).shape == (64,) and model.class_names == []  # sigmoid probabilities
  assert [
    (i["name"], i["model_dtype"], i["preprocessing"]["kind"]) for i in model.spec["inputs"]
  ] == [
    ("user", "int32", "none"),
    ("item", "float32", "standardize"),
  ]
  np.testing.assert_array_equal(
    model.preprocess["item"].arrays["mean"], task.preprocess["item"].arrays["mean"]
  )
  with pytest.raises(ValueError, match=r"takes inputs \['item', 'user'\]: pass a dict"):
    model(pairs["item"])
  with pytest.raises(ValueError, match=r"inputs\['item'\] .* shape \(batch, 4\); got \(64, 3\)"):
    model({"user": pairs["user"], "item": pairs["item"][:, :3]})
  with open(os.path.join(directory, "run_card.json")) as f:
    card = json.load(f)
  assert card["config"] == {} and card["fit_config"]["num_steps"] == 60
  assert card["seeds"] == {"seed": 0} and card["step"] == 60
  history = dl.read_history(os.path.join(workdir, "metrics.jsonl"))
  assert card["metrics"]["validation"] == history["eval"][-1]
  assert (
    card["metrics"]["test"] == history["test"][-1] and card["metrics"]["test"]["accuracy"] > 0.8
  )


def test_nnx_model_exports_exactly_with_its_hidden_layer_as_embedding(tmp_path):
  task, state, directory = _exported_nnx(tmp_path)
  model = export.load(directory)
  images = dl.data.load("digits", "test")["image"]
  np.testing.assert_array_equal(model(images), dl.predict(task, state, images))
  assert model(images).shape == (360, 10) and model.class_names == list("0123456789")
  module = task.model.module(state.params, state.model_state)
  x_BxD = jnp.reshape(task.test["input"], (len(images), -1))
  hidden_BxH = nnx.relu(module.hidden(x_BxD))  # the input of the last nnx.Linear
  np.testing.assert_allclose(model.embed(images), hidden_BxH, rtol=1e-5, atol=1e-6)
  assert model.embed(images).shape == (360, 16)
  assert model.reference.kind == "embeddings" and not model.check_drift(images).drifted


def test_run_card_records_config_data_metrics_and_versions():
  task, _, workdir, directory = exported_cnn()
  with open(os.path.join(directory, "run_card.json")) as f:
    card = json.load(f)
  assert card["config"]["model"] == {"name": "cnn", "features": 4, "hidden": 16}
  assert card["data"]["dataset"] == "digits" and card["data"]["num_train_examples"] == len(
    task.train
  )
  assert card["data"]["fingerprint"] == run_card.data_fingerprint(task.train.arrays)
  assert card["seeds"] == {"seed": 0} and card["step"] == 300
  assert card["fit_config"]["num_steps"] == 300 and card["fit_config"]["batch_size"] == 32
  history = dl.read_history(os.path.join(workdir, "metrics.jsonl"))
  assert card["metrics"]["validation"] == history["eval"][-1]
  assert (
    card["metrics"]["test"] == history["test"][-1] and card["metrics"]["test"]["accuracy"] > 0.5
  )
  assert card["versions"]["jax"] == jax.__version__
  assert card["export"]["verified_batch_sizes"] == [1, 50]


def test_slice_metrics_of_a_group_feature_run_reach_the_run_card(tmp_path):
  config = tiny_config(dataset="credit", group_feature="age_band", num_steps=40, eval_every=40)
  state, history = dl.train(config, str(tmp_path / "run"))
  task = dl.build(config)
  export.export(task, state, str(tmp_path / "export"), workdir=str(tmp_path / "run"))
  with open(tmp_path / "export" / "run_card.json") as f:
    card = json.load(f)
  assert card["config"]["group_feature"] == "age_band"
  for split, record in (("validation", history["eval"][-1]), ("test", history["test"][-1])):
    slices = card["slice_metrics"][split]
    assert {k: v for k, v in record.items() if k in slices} == slices
    assert set(slices) == {"step"} | {
      k for k in record if "/group=" in k or k.endswith("_difference")
    }
    assert "accuracy/group=<30" in slices and "equalized_odds_difference" in slices
    assert set(card["metrics"][split]) == {"step", "loss", "accuracy"}


def test_run_card_carries_the_privacy_budget(tmp_path):
  task, state, _, _ = exported_cnn()
  records = [
    {"split": "train", "step": 10, "loss": 1.0, "epsilon": 0.5},
    {"split": "train", "step": 20, "loss": 0.9, "epsilon": 0.8},
    {"split": "eval", "step": 20, "loss": 0.7, "accuracy": 0.8},
  ]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  dp = dataclasses.replace(task, config={**task.config, "dp_noise_multiplier": 1.1})
  card = run_card.run_card(dp, state, workdir=str(tmp_path))
  assert card["metrics"] == {
    "source": "metrics.jsonl",
    "validation": {"step": 20, "loss": 0.7, "accuracy": 0.8},
  }
  assert card["privacy"] == {"epsilon": 0.8, "noise_multiplier": 1.1, "l2_clip": 1.0, "delta": 1e-5}


def test_run_card_keeps_metrics_whose_names_merely_mention_privacy(tmp_path):
  task, state, _, _ = exported_cnn()
  records = [
    {"split": "train", "step": 10, "loss": 1.0, "delta_loss": 0.1, "epsilon_if_poisson": 0.4},
    {"split": "eval", "step": 10, "loss": 0.7, "delta_loss": 0.2, "privacy_risk": 0.3},
  ]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  card = run_card.run_card(task, state, workdir=str(tmp_path))
  assert card["metrics"]["validation"] == {
    "step": 10,
    "loss": 0.7,
    "delta_loss": 0.2,
    "privacy_risk": 0.3,
  }
  assert card["privacy"] == {"epsilon_if_poisson": 0.4}


def test_run_card_without_a_workdir_evaluates_validation_and_test():
  task, state, workdir, _ = exported_cnn()
  card = run_card.run_card(task, state)
  history = dl.read_history(os.path.join(workdir, "metrics.jsonl"))
  assert card["metrics"]["source"] == "dl.evaluate at export" and card["fit_config"] == {}
  assert card["metrics"]["test"]["accuracy"] == pytest.approx(history["test"][-1]["accuracy"])


def test_data_fingerprint_changes_with_the_training_data():
  task, state, _, directory = exported_cnn()
  with open(os.path.join(directory, "run_card.json")) as f:
    exported_fingerprint = json.load(f)["data"]["fingerprint"]
  same = dl.build(task.config)
  assert run_card.run_card(same, state)["data"]["fingerprint"] == exported_fingerprint
  fewer = dl.build({**task.config, "train_split": "train[:90%]"})
  assert run_card.run_card(fewer, state)["data"]["fingerprint"] != exported_fingerprint
  pixels = same.train.arrays["input"].copy()
  pixels[0, 0, 0, 0] += 1 / 255
  one_pixel = {**same.train.arrays, "input": pixels}
  assert run_card.data_fingerprint(one_pixel) != exported_fingerprint


def test_ensembles_are_refused(tmp_path):
  task, state, _, _ = exported_cnn()
  pair = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  with pytest.raises(ValueError, match="export takes one model; got an ensemble of 2 members"):
    export.export(task, pair, str(tmp_path))
  assert not os.listdir(tmp_path)


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
