"""Model FLOPs, MFU and compile seconds in the train records; the profile hook's trace."""

import dataclasses
import glob
import gzip
import json
import math
import os

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from tiny_config import tiny_config

import dl
from dl.training import flops, profile

COMMON = dict(batch_size=16, log_every=5, eval_every=5, progress=False, tensorboard=False)


def _arrays(n: int = 128, features: int = 8) -> dict[str, np.ndarray]:
  x = np.random.default_rng(0).normal(size=(n, features)).astype(np.float32)
  return {"input": x, "label": (x[:, 0] > 0).astype(np.int32)}


def _task(model: nn.Module) -> dl.Task:
  return dl.task(
    model=model,
    objective=dl.core.objectives.classification,
    optimizer=optax.sgd(0.1),
    train=_arrays(),
    validation_fraction=0.0,
  )


def test_records_carry_model_flops_rates_mfu_and_compile_seconds(tmp_path):
  task = _task(dl.models.create("mlp", num_classes=2, width=16, depth=1))
  _, history = dl.fit(task, str(tmp_path), num_steps=10, **COMMON)
  expected = task.model.module.train_flops((16, 8))
  assert task.flops_per_step(16) == expected
  first, second = history["train"]
  for record in (first, second):
    assert record["model_flops_per_step"] == expected
    for key in ("tflops_per_sec_per_device", "mfu"):
      assert math.isfinite(record[key]) and record[key] > 0, key
  assert first["compile_seconds"] > 0  # the first dispatch compiled (or loaded) the step
  assert second["compile_seconds"] == 0
  saved = json.loads((tmp_path / "fit_config.json").read_text())
  assert saved["peak"]["source"] == flops.MEASURED_CPU and saved["peak"]["flops_per_device"] > 0
  # The rate and the MFU say the same thing, against the peak the run used.
  rate = first["tflops_per_sec_per_device"] * 1e12
  assert first["mfu"] == pytest.approx(rate / saved["peak"]["flops_per_device"])


def test_a_configured_peak_is_used(tmp_path):
  task = _task(dl.models.create("mlp", num_classes=2, width=16, depth=1))
  _, history = dl.fit(task, str(tmp_path), num_steps=5, peak_flops_per_device=1e9, **COMMON)
  (record,) = history["train"]
  assert record["mfu"] == pytest.approx(record["tflops_per_sec_per_device"] * 1e12 / 1e9)
  saved = json.loads((tmp_path / "fit_config.json").read_text())
  assert saved["peak"] == {"flops_per_device": 1e9, "source": "configured (peak_flops_per_device)"}


def _xla_count_of_one_step(task: dl.Task, batch_size: int) -> float:
  """XLA's FLOPs of the task's step on one batch, lowered on its own."""
  state = task.init(seed=0)
  batch = {k: v[:batch_size] for k, v in task.train.arrays.items()}
  return jax.jit(task.step).lower(state, batch).cost_analysis()["flops"]


@pytest.mark.parametrize("steps_per_dispatch", [1, 5])
def test_a_model_without_train_flops_gets_xla_count_of_one_step(tmp_path, steps_per_dispatch):
  """Fused runs too: the count comes from the one-step program (XLA counts a scan body once)."""
  task = _task(nn.Dense(2))
  assert task.flops_per_step(16) is None
  _, history = dl.fit(
    task, str(tmp_path), num_steps=10, steps_per_dispatch=steps_per_dispatch, **COMMON
  )
  expected = _xla_count_of_one_step(task, 16)
  assert expected > 2 * 16 * 8 * 2  # at least the forward matmul
  assert [r["model_flops_per_step"] for r in history["train"]] == [expected, expected]
  assert all(r["mfu"] > 0 for r in history["train"])


@pytest.mark.parametrize("parallel", ["data", "pmap"])
def test_xla_count_is_the_whole_steps_on_a_mesh_and_under_pmap(tmp_path, parallel):
  """A jit over a mesh is lowered whole; a pmap program is one device's, counted 8 times."""
  task = _task(nn.Dense(2))
  _, history = dl.fit(task, str(tmp_path), num_steps=5, parallel=parallel, **COMMON)
  (record,) = history["train"]
  single = _xla_count_of_one_step(task, 16)
  if parallel == "data":  # the same step, but for the layout's few ops (1813 vs 1817 here)
    assert record["model_flops_per_step"] == pytest.approx(single, rel=0.01)
  else:  # 8 devices x (2 examples, the update repeated on each)
    assert single <= record["model_flops_per_step"] < 8 * single
  steps_per_sec = record["examples_per_sec"] / 16
  per_device = record["model_flops_per_step"] * steps_per_sec / 8 / 1e12
  assert record["tflops_per_sec_per_device"] == pytest.approx(per_device)


@dataclasses.dataclass(frozen=True)
class _FakeDevice:
  device_kind: str
  platform: str = "gpu"


@pytest.mark.parametrize(
  "kind, peak",
  [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
  ],
)
def test_peak_table_matches_device_kinds(kind, peak):
  got, source = flops.peak_flops_per_device(_FakeDevice(kind))
  assert got == peak and kind in source


def test_unknown_device_has_no_peak_and_a_configured_one_wins():
  assert flops.peak_flops_per_device(_FakeDevice("Some Accelerator"))[0] is None
  assert flops.peak_flops_per_device(_FakeDevice("Some Accelerator"), 5e12)[0] == 5e12
  assert flops.rates(1e12, 2, 1.0, 2, None) == {"tflops_per_sec_per_device": 1.0}


class _Dispatches(dl.Hook):
  def __init__(self):
    self.calls = []

  def before_dispatch(self, step, num_steps):
    self.calls.append((step, num_steps))


def test_before_dispatch_is_called_once_per_dispatch_then_at_the_end(tmp_path):
  hook = _Dispatches()
  task = _task(nn.Dense(2))
  dl.fit(task, str(tmp_path), num_steps=10, steps_per_dispatch=3, hooks=[hook], **COMMON)
  # Fused dispatches stop at the log steps 5 and 10; (10, 0): the loop ended.
  assert hook.calls == [(0, 3), (3, 2), (5, 3), (8, 2), (10, 0)]


def _trace_steps(logdir: str) -> set[int]:
  """The step numbers of the "train" step annotations in the trace under `logdir`."""
  (path,) = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.trace.json.gz"))
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  return {int(e["args"]["step_num"]) for e in events if e.get("name") == "train"}


def test_profile_hook_traces_the_steps_asked_for(tmp_path):
  logdir = str(tmp_path / "profile")
  task = _task(nn.Dense(2))
  dl.fit(task, str(tmp_path / "run"), num_steps=10, hooks=[dl.ProfileHook(3, 4, logdir)], **COMMON)
  (xplane,) = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
  with open(xplane, "rb") as f:
    assert b"train" in f.read()
  assert _trace_steps(logdir) == {3, 4, 5, 6}


class _FailsAtLog(dl.Hook):
  def on_log(self, step, record):
    raise RuntimeError("stop here")


def test_profile_stops_when_fit_raises(tmp_path):
  logdir = str(tmp_path / "profile")
  hook = dl.ProfileHook(0, 100, logdir)
  with pytest.raises(RuntimeError, match="stop here"):
    dl.fit(
      _task(nn.Dense(2)), str(tmp_path / "run"), num_steps=10, hooks=[hook, _FailsAtLog()], **COMMON
    )
  assert not hook.tracing
  assert _trace_steps(logdir) == {0, 1, 2, 3, 4}
  jax.profiler.start_trace(str(tmp_path / "again"))  # no trace is left running
  jax.profiler.stop_trace()


def test_config_keys_reach_the_loop_and_the_profile(tmp_path):
  config = tiny_config(num_steps=6, log_every=3, eval_every=6)
  config.profile_steps = "2:2"
  config.fit.peak_flops_per_device = 2e9
  config.fit.compilation_cache_dir = str(tmp_path / "cache")
  before = jax.config.jax_compilation_cache_dir
  _, history = dl.train(config, str(tmp_path / "run"))
  assert _trace_steps(str(tmp_path / "run" / "profile")) == {2, 3}
  record = history["train"][0]
  assert record["mfu"] == pytest.approx(record["tflops_per_sec_per_device"] * 1e12 / 2e9)
  # The suite's JAX_COMPILATION_CACHE_DIR (conftest) wins over the config's directory.
  assert os.environ["JAX_COMPILATION_CACHE_DIR"] == before == jax.config.jax_compilation_cache_dir
  built = dl.build(config)
  assert dl.recipes.from_config.fit_config(config, built).compilation_cache_dir == str(
    tmp_path / "cache"
  )


@pytest.mark.parametrize("text", ["10", "a:5", "3:0", "-1:2"])
def test_bad_profile_steps_are_refused(text):
  with pytest.raises(ValueError, match="START:NUM"):
    profile.parse_steps(text)
  with pytest.raises(ValueError, match="START:NUM"):
    dl.parse_config(tiny_config(profile_steps=text))
