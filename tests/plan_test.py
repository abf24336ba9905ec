"""dl.plan: the memory plan from shapes alone, checked against the state materialised on 8
fake CPU devices; the replication check before compiling; the command line; a large LM on
256 virtual devices."""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import dl
from dl.models.decoder import DecoderLM
from dl.recipes import plan as plan_lib
from dl.training import placement

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYOUTS = ("data=2,fsdp=2,model=2", "fsdp=4,model=2")


def _lm_task() -> dl.Task:
  """A tiny decoder LM whose annotated dimensions the layouts divide."""
  tokens_NxL = np.random.default_rng(0).integers(0, 64, (64, 17), dtype=np.int32)
  model = DecoderLM(
    num_classes=64, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64, max_len=16
  )
  return dl.task(
    model=model,
    objective=dl.core.objectives.next_token,
    optimizer=optax.adamw(1e-3),
    train={"input": tokens_NxL[:, :-1], "label": tokens_NxL[:, 1:]},
    validation_fraction=0.0,
  )


@pytest.mark.parametrize("mesh_shape", LAYOUTS)
def test_the_plan_is_what_each_device_holds_once_initialised(mesh_shape):
  task = _lm_task()
  plan = dl.plan(task, mesh_shape=mesh_shape, batch_size=16, compile=False)
  init = lambda: task.init(0)  # noqa: E731
  abstract_state = jax.eval_shape(init)
  layout = placement.create(
    "mesh", mesh_shape, abstract_state, param_axes=task.param_axes(), max_replicated_mb=64
  )
  state = layout.init(init)
  held = {
    dl.core.parallel.path_name(path): max(s.data.nbytes for s in x.addressable_shards)
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
  }
  rows = {row.path: row.device_bytes for row in plan.leaves}
  assert rows == held
  assert any(row.device_bytes < row.bytes for row in plan.leaves)  # something is sharded
  for group, total in (("params", plan.params_bytes), ("opt_state", plan.opt_state_bytes)):
    assert total == sum(row.device_bytes for row in plan.leaves if row.group == group)
  assert plan.grads_bytes == plan.params_bytes
  assert plan.total_bytes == sum(held.values()) + plan.grads_bytes
  params = jax.tree.leaves(state.params)
  assert plan.num_params == sum(x.size for x in params)
  whole = sum(x.nbytes for x in params if x.sharding.is_fully_replicated)
  assert plan.replicated_fraction == pytest.approx(whole / sum(x.nbytes for x in params))
  assert "params/block_0/mlp/up/kernel" in str(plan) and "state + gradients" in str(plan)


def test_the_compiled_step_reports_memory_and_flops(monkeypatch):
  monkeypatch.setattr(jax, "device_put", _no_allocation)  # nothing of the state is made
  monkeypatch.setattr(placement.Placement, "init", _no_allocation)
  task = _lm_task()
  alive = {id(x) for x in jax.live_arrays()}
  plan = dl.plan(task, mesh_shape="fsdp=4,model=2", batch_size=16)
  assert [x.shape for x in jax.live_arrays() if id(x) not in alive] == []
  assert plan.flops_per_device > 0
  batch_per_device = 2 * (16 // 4) * 16 * 4  # input and label, int32, split over fsdp
  state_per_device = plan.total_bytes - plan.grads_bytes
  assert plan.memory["argument"] == state_per_device + batch_per_device
  assert plan.memory["alias"] == state_per_device  # the state is donated
  assert plan.memory["temp"] > 0 and plan.step_bytes >= plan.memory["argument"]
  assert "temp" in str(plan)
  record = json.loads(json.dumps(plan.to_dict()))
  assert record["num_devices"] == 8 and record["memory"] == plan.memory


def _no_allocation(*args, **kwargs):
  raise AssertionError("the plan made an array of the state")


class WideDense(nn.Module):
  """One 1003 x 1001 kernel (3.8 MiB): no dimension of it is divisible by fsdp=8."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(1001)(x)


def _wide_task() -> dl.Task:
  rng = np.random.default_rng(0)
  return dl.task(
    model=WideDense(),
    objective=dl.core.objectives.classification,
    optimizer=optax.sgd(0.1),
    train={"input": rng.normal(size=(32, 1003)).astype(np.float32), "label": np.arange(32)},
    validation_fraction=0.0,
  )


class _Dispatches(dl.Hook):
  def __init__(self):
    self.calls = []

  def before_dispatch(self, step: int, num_steps: int) -> None:
    self.calls.append((step, num_steps))


def test_a_replicated_kernel_stops_the_plan_and_the_run_before_compiling(tmp_path, monkeypatch):
  common = dict(batch_size=8, progress=False, tensorboard=False)
  dl.fit(_wide_task(), str(tmp_path), num_steps=2, **common)  # one device: a checkpoint
  before = {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*")}
  assert before
  message = r"params/Dense_0/kernel \(1003, 1001\) \(3\.8 MiB\) would be replicated"
  mesh = dict(parallel="mesh", mesh_shape="fsdp=8", max_replicated_mb=1.0)
  with monkeypatch.context() as patch:
    patch.setattr(plan_lib, "_compile", _no_allocation)
    with pytest.raises(ValueError, match=message):
      dl.plan(_wide_task(), batch_size=8, **mesh)
  hook = _Dispatches()
  with pytest.raises(ValueError, match=message):
    dl.fit(_wide_task(), str(tmp_path), num_steps=4, hooks=[hook], **mesh, **common)
  assert hook.calls == []
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*")} == before
  # Raised, the kernel is allowed: the plan says it is whole on every device.
  plan = dl.plan(_wide_task(), batch_size=8, compile=False, **dict(mesh, max_replicated_mb=8))
  assert plan.replicated_fraction == pytest.approx(1.0, abs=1e-3)


def _run(args: list[str], timeout: float = 120) -> str:
  done = subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_the_command_line_prints_the_table_for_a_config():
  out = _run(
    [
      "-m",
      "dl.cli.plan",
      "--config",
      "experiments/pydoc_decoder_lm.py",
      "--devices",
      "8",
      "--mesh_shape",
      "fsdp=4,model=2",
      "--no_compile",
      "--config.model.width=32",
      "--config.model.mlp_dim=64",
    ]
  )
  assert "mesh data=1,fsdp=4,model=2 (8 devices)" in out
  assert re.search(r"params/logits/kernel +\(32, 98\) +float32 +P\('fsdp', 'model'\)", out)
  assert re.search(r"parameters +\d+\.\d\d +\d\.\d{3}", out)
  assert "compiled step: not compiled" in out


# About 121 M parameters: 2 x 256 x 1024 embedding and output, 8 blocks of attention
# (1024 x 16 x 64 queries and output, 1024 x 4 x 64 keys and values), a 3 x 1024 x 4096
# SwiGLU MLP and two 1024 norms, and the final norm.
_LARGE_LM = """
import json, resource, jax, numpy as np, optax, dl
from dl.models.decoder import DecoderLM
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 256)
assert len(jax.devices()) == 256  # the backend and its 256 devices exist before measuring
tokens = np.zeros((8, 128), np.int32)
model = DecoderLM(num_classes=256, width=1024, depth=8, num_heads=16, num_kv_heads=4,
                  mlp_dim=4096, max_len=2048)
task = dl.task(model=model, objective=dl.core.objectives.next_token, optimizer=optax.adamw(1e-3),
               train={"input": tokens, "label": tokens}, validation_fraction=0.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
plan = dl.plan(task, devices=256, mesh_shape="fsdp=64,model=4", batch_size=256, compile=False)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps(plan.to_dict() | {"peak_rss_growth_bytes": grown}))
"""


def test_a_large_lm_on_256_virtual_devices_is_planned_from_shapes():
  record = json.loads(_run(["-c", _LARGE_LM]).splitlines()[-1])
  width, depth, mlp, vocab = 1024, 8, 4096, 256
  matrices = 2 * vocab * width + depth * (2 * width * width + 2 * width * 256 + 3 * width * mlp)
  norms = (2 * depth + 1) * width
  assert record["num_params"] == matrices + norms
  assert record["num_devices"] == 256 and record["mesh_shape"]["fsdp"] == 64
  assert record["params_bytes"] == 4 * (matrices // 256 + norms)  # the norms replicated
  assert record["opt_state_bytes"] == 2 * record["params_bytes"] + 4  # Adam's mu, nu, count
  assert record["memory"] is None and record["compile_seconds"] is None
  assert math.isclose(record["replicated_fraction"], norms / (matrices + norms))
  whole_state = 3 * 4 * (matrices + norms)  # parameters and two Adam moments, float32
  # Never held, not even once: the peak grew by far less than the state (1.47 GB).
  assert record["peak_rss_growth_bytes"] < whole_state / 4, record["peak_rss_growth_bytes"]
  assert len(jax.devices()) == 8 and os.environ.get("XLA_FLAGS")  # this process is untouched


def test_the_1b_config_parses_and_has_a_billion_parameters():
  path = ROOT / "experiments" / "plan_1b_lm.py"
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = dl.parse_config(module.get_config())  # not among experiments_test's: never trained
  fields = {k: v for k, v in config.model.items() if k != "name"}
  model = dl.models.create(config.model["name"], num_classes=98, **fields)
  ids_1xL = jax.ShapeDtypeStruct((1, 128), np.int32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), ids_1xL)
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 981_944_320
