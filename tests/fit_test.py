"""`dl.fit` with a researcher's own parts: a two-input Linen model with its own objective and
schedule, an NNX model, data as arrays, a TFDS name or a data source, hooks."""

import ast
import json
import os
import pathlib
import sys

import chex
import jax
import kill
import numpy as np
import optax
import pytest
import user_parts

import dl

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "tests" / "user_parts.py")


def test_kill_then_resume_is_bit_identical(tmp_path):
  """SIGKILL mid-run and resume: the same parameters, bit for bit, as an uninterrupted run.

  (An NNX model's state is the same kind of pytree: `test_nnx_model_trains_with_batch_stats_
  and_restores` covers its checkpoints.)"""
  kind, num_steps = "two_input", 400
  killed = str(tmp_path / "killed")
  command = [sys.executable, SCRIPT, kind, killed, str(num_steps)]
  resume = lambda: user_parts.fit(kind, killed, num_steps)  # noqa: E731  (the script's call)
  assert kill.kill_then_rerun(command, tmp_path / "killed", 25, resume=resume) < num_steps
  full, _ = user_parts.fit(kind, str(tmp_path / "full"), num_steps)  # in this process
  task = user_parts.TASKS[kind]()
  config = dl.FitConfig(num_steps=num_steps, batch_size=32)
  resumed = dl.restore(task, str(tmp_path / "killed"), step=None, fit=config)
  assert int(resumed.step) == num_steps
  chex.assert_trees_all_equal(full, resumed)
  history = dl.read_history(str(tmp_path / "killed" / "metrics.jsonl"))
  logged = set(range(10, num_steps + 1, 10)) | set(range(25, num_steps + 1, 25))
  assert [r["step"] for r in history["train"]] == sorted(logged)


def test_two_input_model_objective_metadata_and_test_once(tmp_path):
  state, history = user_parts.fit("two_input", str(tmp_path), 100)
  assert int(state.step) == 100
  assert history["eval"][-1]["error"] < 0.3  # 10 classes: chance is 0.9
  # "error" is lower-is-better: the test is scored once, on a checkpoint of least validation error.
  errors = {r["step"]: r["error"] for r in history["eval"]}
  (test,) = history["test"]
  assert errors[test["step"]] == min(errors.values())
  assert test["error"] < 0.3
  task = user_parts.two_input_task()
  raw = {k: v[:5] for k, v in user_parts.halves()["test"].items() if k != "label"}
  probs = dl.predict(task, state, raw)
  assert probs.shape == (5, 10)
  with pytest.raises(ValueError, match=r"inputs\['right'\] .* must have shape \(batch, 32\)"):
    dl.predict(task, state, {"left": raw["left"], "right": raw["right"][:, :3]})


def test_two_input_ensemble_of_4_equals_4_separate_runs(tmp_path):
  task = user_parts.two_input_task()
  common = dict(num_steps=30, batch_size=32, eval_every=30, progress=False, tensorboard=False)
  ensemble, history = dl.fit(task, str(tmp_path / "ens"), ensemble_size=4, **common)
  assert len(history["eval"][-1]["error"]) == 4
  for seed in range(4):
    alone, _ = dl.fit(task, str(tmp_path / f"seed{seed}"), seed=seed, **common)
    member = jax.tree.map(lambda x, s=seed: x[s], ensemble)
    chex.assert_trees_all_close(member.params, alone.params, rtol=1e-5, atol=1e-5)


def test_two_input_fsdp_on_8_devices_equals_jit(tmp_path):
  assert jax.device_count() == 8
  task = user_parts.two_input_task()
  common = dict(num_steps=20, batch_size=32, eval_every=20, progress=False, tensorboard=False)
  ref, ref_history = dl.fit(task, str(tmp_path / "jit"), **common)
  sharded, history = dl.fit(task, str(tmp_path / "fsdp"), parallel="fsdp", **common)
  kernel = sharded.params["Dense_0"]["kernel"]
  assert kernel.sharding.spec != jax.sharding.PartitionSpec()  # really split over devices
  chex.assert_trees_all_close(jax.device_get(sharded.params), ref.params, rtol=1e-5, atol=1e-5)
  assert history["test"][-1]["error"] == pytest.approx(ref_history["test"][-1]["error"], abs=1e-6)


def test_nnx_model_trains_with_batch_stats_and_restores(tmp_path):
  state, history = user_parts.fit("nnx", str(tmp_path), 60, eval_every=30)
  assert history["test"][-1]["accuracy"] > 0.7
  assert set(state.model_state) == {"norm"}  # batch statistics, kept as a pure dict
  restored = dl.restore(
    user_parts.nnx_task(), str(tmp_path), step=None, fit=dl.FitConfig(num_steps=60, batch_size=32)
  )
  chex.assert_trees_all_equal(state, restored)


def test_data_as_arrays_a_tfds_name_or_a_data_source_give_the_same_task():
  parts = dict(
    model=dl.models.MLP(num_classes=10, width=8, depth=1),
    objective=dl.core.objectives.classification,
    optimizer=optax.sgd(0.1),
  )
  named = dl.task(train=("digits", "train"), **parts)  # uint8 pixels, scaled to [0, 1]
  assert named.preprocess["input"].kind == "scale"
  scale = {"input": dl.data.transforms.Preprocess("scale", {"divisor": np.array(255.0)})}
  raw = dl.data.load("digits", "train")
  given = dl.task(
    train={"input": raw["image"], "label": raw["label"].astype(np.int32)}, preprocess=scale, **parts
  )
  source = dl.data.loading.data_source("digits", "train", data_dir=os.environ["DL_DATA_DIR"])
  from_source = dl.task(
    train=source,
    preprocess={"image": scale["input"]},
    **parts | {"model": dl.Linen(parts["model"], inputs=("image",))},
  )
  assert len(named.train) == len(given.train) == len(from_source.train) == round(1437 * 0.9)
  for split in ("train", "eval"):
    a, b, c = (getattr(t, split) for t in (named, given, from_source))
    a, b, c = (x.arrays if split == "train" else x for x in (a, b, c))
    np.testing.assert_array_equal(a["input"], b["input"])
    np.testing.assert_array_equal(a["input"], c["image"])
    np.testing.assert_array_equal(a["label"], c["label"])


def test_a_stream_holds_out_and_is_preprocessed_as_its_arrays_are():
  parts = dict(
    model=dl.models.MLP(num_classes=10, width=8, depth=1),
    objective=dl.core.objectives.classification,
    optimizer=optax.sgd(0.1),
  )
  named = dl.task(train=("digits", "train"), **parts)
  source = dl.data.loading.data_source("digits", "train", data_dir=os.environ["DL_DATA_DIR"])
  for stream_held_out in (False, True):
    streamed = dl.task(
      train=dl.data.streaming.Streaming(source, input_key="image"),
      stream_held_out=stream_held_out,
      **parts,
    )
    assert streamed.preprocess["input"].kind == "scale"
    train = streamed.train.read(np.arange(len(streamed.train)))
    np.testing.assert_array_equal(train["input"], named.train.arrays["input"])
    held_out = (
      streamed.eval.split.read(np.arange(len(streamed.eval))) if stream_held_out else streamed.eval
    )
    np.testing.assert_array_equal(held_out["input"], named.eval["input"])


def test_bad_parts_are_named():
  model = dl.models.MLP(num_classes=10, width=8, depth=1)
  arrays = {"x": np.zeros((10, 4), np.float32), "label": np.zeros(10, np.int32)}
  with pytest.raises(
    ValueError, match=r"the model reads \['input'\]; the training data has \['label', 'x'\]"
  ):
    dl.task(
      model=model,
      objective=dl.core.objectives.classification,
      optimizer=optax.sgd(0.1),
      train=arrays,
    )
  with pytest.raises(TypeError, match="optimizer must be an optax GradientTransformation"):
    dl.task(model=model, objective=dl.core.objectives.classification, optimizer=0.1, train=arrays)
  with pytest.raises(TypeError, match=r"NNX takes a function that builds the module from nnx.Rngs"):
    dl.NNX(user_parts.NNXMLP(user_parts.nnx.Rngs(0)))
  with pytest.raises(ValueError, match="every array needs the same leading"):
    dl.task(
      model=model,
      objective=dl.core.objectives.classification,
      optimizer=optax.sgd(0.1),
      train={"input": np.zeros((10, 4)), "label": np.zeros(9)},
    )


class _Counter(dl.Hook):
  def __init__(self):
    self.calls = []

  def on_log(self, step, record):
    return {"double_loss": 2 * record["loss"]}

  def on_eval(self, state, step, split):
    self.calls.append((step, split))
    return {"step_seen": float(state.step)}


def test_hooks_add_to_the_records(tmp_path):
  hook = _Counter()
  _, history = user_parts.fit("two_input", str(tmp_path), 20, eval_every=10, hooks=[hook])
  assert all(r["double_loss"] == 2 * r["loss"] for r in history["train"])
  assert hook.calls[:2] == [(10, "eval"), (20, "eval")] and hook.calls[2][1] == "test"
  assert [r["step_seen"] for r in history["eval"]] == [10.0, 20.0]


def test_cli_modules_do_not_shadow_the_functions():
  import dl.cli.predict  # noqa: F401
  import dl.cli.train  # noqa: F401

  assert callable(dl.train) and callable(dl.predict)


def test_the_loop_imports_no_feature():
  """DP-SGD and slice metrics come in as steps and hooks: the loop never imports them."""
  for path in (REPO / "dl" / "training").glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
        assert not any(part in ("privacy", "fairness") for n in names for part in n.split(".")), (
          f"{path.name} imports {names}"
        )


def _dense_task(**kwargs):
  """A bare `nn.Dense` (no `train` argument) on flattened digits: the cheapest real task."""
  raw = dl.data.load("digits", "train")
  arrays = {
    "input": raw["image"].reshape(len(raw["image"]), -1).astype(np.float32) / 16,
    "label": raw["label"].astype(np.int32),
  }
  return dl.task(
    model=user_parts.nn.Dense(10),
    objective=dl.core.objectives.classification,
    optimizer=optax.sgd(0.1),
    train=arrays,
    test=arrays,
    **kwargs,
  )


def test_checkpoint_choice_follows_the_objective_and_the_test_uses_it(tmp_path):
  """A metric named in the config takes its direction from the objective; in every layout
  (pmap included) the test is scored on the chosen checkpoint, restored, not the last one."""
  task = _dense_task()
  common = dict(num_steps=40, batch_size=32, eval_every=10, progress=False, tensorboard=False)
  _, history = dl.fit(task, str(tmp_path / "loss"), best_metric="loss", **common)
  saved = json.loads((tmp_path / "loss" / "fit_config.json").read_text())
  assert saved["selection"] == ["loss", "min"]
  losses = {r["step"]: r["loss"] for r in history["eval"]}
  assert history["test"][0]["step"] == min(losses, key=losses.get)
  # The worst loss chooses an early checkpoint, so the test must restore it, also under pmap.
  worst, pmap_history = dl.fit(
    task, str(tmp_path / "pmap"), parallel="pmap", best_metric="loss", best_mode="max", **common
  )
  (test,) = pmap_history["test"]
  assert test["step"] == 10 and int(worst.step) == 40
  chosen = dl.training.loop.restore(task, str(tmp_path / "pmap"), step="best")
  assert int(chosen.step) == 10
  assert test["loss"] == pytest.approx(dl.evaluate(chosen, task.model, task.test)["loss"], 1e-6)


def test_only_the_latest_and_the_best_checkpoints_are_kept(tmp_path):
  dl.fit(
    _dense_task(),
    str(tmp_path),
    num_steps=40,
    batch_size=32,
    eval_every=20,
    checkpoint_every=4,
    keep_checkpoints=1,
    progress=False,
    tensorboard=False,
  )
  kept = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert len(kept) <= 2 and kept[-1] == 40  # the newest, and the best if it is another


def test_a_misspelt_best_metric_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"best_metric 'acuracy' is not among .*'accuracy'"):
    dl.fit(_dense_task(), str(tmp_path), num_steps=10, batch_size=32, best_metric="acuracy")


def test_nnx_dropout_layers_draw_their_own_masks():
  class TwoDropouts(user_parts.nnx.Module):
    def __init__(self, rngs):
      self.a = user_parts.nnx.Dropout(0.5, rngs=rngs)
      self.b = user_parts.nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.a(x), self.b(x)

  model = dl.NNX(TwoDropouts)
  params, model_state = model.init(jax.random.PRNGKey(0), {})
  x = {"input": np.ones((4, 16), np.float32)}
  (a, b), _ = model.apply(params, model_state, x, train=True, rng=jax.random.PRNGKey(1))
  (a2, _), _ = model.apply(params, model_state, x, train=True, rng=jax.random.PRNGKey(2))
  assert not np.array_equal(a, b)  # two layers, two masks
  assert not np.array_equal(a, a2)  # another step, another mask
  (a3, b3), _ = model.apply(params, model_state, x, train=False)
  np.testing.assert_array_equal(a3, x["input"])
