"""Sharding by rules on 8 fake CPU devices: the model's own annotations, the user's rules and
the fsdp shape rule, over meshes with a tensor-parallel "model" axis."""

import functools
import math
import pathlib
import re
import sys
import warnings

import chex
import jax
import kill
import numpy as np
import optax
import pytest
import user_parts

import dl
from dl.core import parallel
from dl.training import placement

LAYOUTS = ("data=2,fsdp=2,model=2", "fsdp=4,model=2", "model=8")
COMMON = dict(num_steps=20, batch_size=32, eval_every=20, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The annotated MLP trained 20 steps on one device."""
  workdir = str(tmp_path_factory.mktemp("jit"))
  return dl.fit(user_parts.tensor_parallel_task(), workdir, **COMMON)


def _axes_of(spec_entry) -> tuple[str, ...]:
  if spec_entry is None:
    return ()
  return (spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry)


def _expected_spec(names, shape, mesh_shape) -> tuple:
  """What the default logical rules make of `names` on a mesh of `mesh_shape` (by hand)."""
  rules = {"embed": "fsdp", "mlp": "model", "heads": "model", "kv_heads": "model", "vocab": "model"}
  out = []
  for name, size in zip(names, shape):
    axis = rules.get(name)
    ok = axis is not None and mesh_shape[axis] > 1 and size % mesh_shape[axis] == 0
    out.append(axis if ok else None)
  while out and out[-1] is None:
    out.pop()
  return tuple(out)


def _check_layout(state, task, mesh_shape: dict[str, int]) -> None:
  """Each annotated leaf (parameter and optimizer moment) is laid out as the rules say, and
  holds total / (product of its mesh axes) bytes on each device."""
  axes = task.param_axes()
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  checked = 0
  for path, x in leaves:
    name = parallel.path_name(path)
    param = next((p for p in axes if name.endswith(p)), None)
    if param is None or not axes[param] or x.ndim != len(axes[param]):
      continue
    spec = tuple(x.sharding.spec)
    while spec and spec[-1] is None:
      spec = spec[:-1]
    assert spec == _expected_spec(axes[param], x.shape, mesh_shape), name
    split = math.prod(mesh_shape[a] for entry in spec for a in _axes_of(entry))
    assert {s.data.nbytes for s in x.addressable_shards} == {x.nbytes // split}, name
    checked += 1
  assert checked >= 6  # 3 annotated parameters, and their two Adam moments


@pytest.mark.parametrize("mesh_shape", LAYOUTS)
def test_annotated_mlp_trains_as_on_one_device(reference, tmp_path, mesh_shape):
  ref, ref_history = reference
  task = user_parts.tensor_parallel_task()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state, history = dl.fit(task, str(tmp_path), parallel="mesh", mesh_shape=mesh_shape, **COMMON)
  chex.assert_trees_all_close(jax.device_get(state.params), ref.params, rtol=1e-5, atol=1e-5)
  losses = [r["loss"] for r in history["train"]]
  np.testing.assert_allclose(losses, [r["loss"] for r in ref_history["train"]], rtol=1e-5)
  sizes = parallel.mesh_sizes("mesh", mesh_shape, 8)
  _check_layout(state, task, sizes)
  kernel = state.params["Dense_0"]["kernel"]
  assert "model" in tuple(kernel.sharding.spec)  # really tensor parallel
  # The output layer's 10 columns are not divisible by fsdp=4: said once, by name.
  named = [str(w.message) for w in caught if "Dense_1/kernel" in str(w.message)]
  assert len(named) == (sizes["fsdp"] == 4), named
  assert all("dimension 1 (10) is not divisible by fsdp (4)" in message for message in named)


def _groups(line: str) -> list[set[int]]:
  """The replica groups of an HLO collective, in either of XLA's two spellings."""
  explicit = re.search(r"replica_groups=\{(\{[\d,]+\}(?:,\{[\d,]+\})*)\}", line)
  if explicit:
    return [set(map(int, g.split(","))) for g in re.findall(r"\{([\d,]+)\}", explicit.group(1))]
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
  assert iota, line
  groups, size = int(iota.group(1)), int(iota.group(2))
  ids = np.arange(math.prod(map(int, iota.group(3).split(",")))).reshape(
    tuple(map(int, iota.group(3).split(",")))
  )
  if iota.group(4):
    ids = ids.transpose(tuple(map(int, iota.group(4).split(","))))
  return [set(row) for row in ids.reshape(groups, size).tolist()]


def test_tensor_parallel_forward_all_reduces_over_the_model_axis():
  task = user_parts.tensor_parallel_task()
  abstract = jax.eval_shape(lambda: task.init(0))
  layout = placement.create("mesh", "data=2,fsdp=2,model=2", abstract, param_axes=task.param_axes())
  state = layout.init(lambda: task.init(0))

  def forward(state, x_BxHxWx1):
    return task.model.apply(state.params, state.model_state, {"input": x_BxHxWx1}, train=False)[0]

  batch = np.zeros((32, 8, 8, 1), np.float32)
  x = jax.device_put(batch, parallel.batch_sharding(layout.mesh))
  hlo = jax.jit(layout._in_mesh(forward)).lower(state, x).compile().as_text()
  model_groups = [{d.id for d in layout.mesh.devices[i, j, :]} for i in range(2) for j in range(2)]
  reductions = [
    line for line in hlo.splitlines() if re.search(r"= \S+ (all-reduce|reduce-scatter)\(", line)
  ]
  assert reductions, "no all-reduce or reduce-scatter in the tensor-parallel forward"
  assert any(
    sorted(map(sorted, _groups(line))) == sorted(map(sorted, model_groups)) for line in reductions
  )


def test_nnx_sharding_metadata_is_honoured(tmp_path):
  task = user_parts.sharded_nnx_task()
  assert task.param_axes()["hidden/kernel"] == ("embed", "mlp")
  ref, _ = dl.fit(task, str(tmp_path / "jit"), **COMMON)
  state, _ = dl.fit(
    task, str(tmp_path / "tp"), parallel="mesh", mesh_shape="fsdp=4,model=2", **COMMON
  )
  chex.assert_trees_all_close(jax.device_get(state.params), ref.params, rtol=1e-5, atol=1e-5)
  spec = state.params["hidden"]["kernel"].sharding.spec
  assert spec == jax.sharding.PartitionSpec("fsdp", "model")
  _check_layout(state, task, parallel.mesh_sizes("mesh", "fsdp=4,model=2", 8))


def test_user_rules_come_after_the_model_and_before_the_shape_rule():
  task = user_parts.two_input_task()  # no annotations
  abstract = jax.eval_shape(lambda: task.init(0))
  mesh = parallel.make_mesh("mesh", "fsdp=2,model=4")
  rules = ((r"Dense_0/kernel$", (None, "model")), (r"Dense_2/kernel$", ("mlp", None)))
  leaves = {
    leaf.path: leaf
    for leaf in parallel.layout_leaves(abstract, mesh, param_axes=task.param_axes(), rules=rules)
  }
  assert leaves["params/Dense_0/kernel"].spec == jax.sharding.PartitionSpec(None, "model")
  assert leaves["params/Dense_0/kernel"].source == "rule"
  mu = [p for p in leaves if p.endswith("mu/Dense_0/kernel")]
  assert mu and all(leaves[p].spec == leaves["params/Dense_0/kernel"].spec for p in mu)
  assert leaves["params/Dense_2/kernel"].spec == jax.sharding.PartitionSpec("model")
  assert leaves["params/Dense_1/kernel"].source == "shape"  # (32, 32): the fsdp shape rule
  assert leaves["params/Dense_1/kernel"].spec == jax.sharding.PartitionSpec("fsdp")
  with pytest.raises(ValueError, match=r"Dense_0/kernel.*shape \(32, 32\).*one name"):
    parallel.layout_leaves(abstract, mesh, rules=((r"Dense_0/kernel$", ("model",)),))
  with pytest.raises(ValueError, match="'wide'.*no logical axis rule"):
    parallel.layout_leaves(abstract, mesh, rules=((r"Dense_0/kernel$", ("wide", None)),))
  # Logical rules of the user's take precedence: keep the hidden units whole.
  axes = user_parts.tensor_parallel_task().param_axes()
  mp = jax.eval_shape(lambda: user_parts.tensor_parallel_task().init(0))
  whole = parallel.layout_leaves(
    mp, mesh, param_axes=axes, logical_rules=(("mlp", None), *parallel.LOGICAL_RULES)
  )
  specs = {leaf.path: leaf.spec for leaf in whole}
  assert specs["params/Dense_0/kernel"] == jax.sharding.PartitionSpec("fsdp")


def test_a_large_replicated_parameter_stops_the_run_before_training(tmp_path):
  task = user_parts.two_input_task()  # kernels (32, 32), (32, 32), (64, 10): none annotated
  common = dict(COMMON, parallel="mesh", mesh_shape="model=8")  # no fsdp axis for the shape rule
  message = r"params/Dense_[01]/kernel \(32, 32\).*replicated.*no fsdp axis.*max_replicated_mb"
  with pytest.raises(ValueError, match=message):
    dl.fit(task, str(tmp_path), max_replicated_mb=1e-3, **common)
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
  # On a data-parallel mesh replication is the layout asked for.
  dl.fit(task, str(tmp_path / "data"), max_replicated_mb=1e-3, **dict(common, mesh_shape="data=8"))


def test_a_checkpoint_saved_tensor_parallel_restores_on_one_device_and_data_parallel(tmp_path):
  task = user_parts.tensor_parallel_task()
  saved, _ = dl.fit(task, str(tmp_path), parallel="mesh", mesh_shape="fsdp=4,model=2", **COMMON)
  config = dl.FitConfig(**COMMON)
  one = dl.training.loop.restore(task, str(tmp_path), config)
  data = dl.training.loop.restore(task, str(tmp_path), config, parallel="data")
  assert one.params["Dense_0"]["kernel"].sharding.is_fully_replicated
  assert len(data.params["Dense_0"]["kernel"].sharding.device_set) == 8
  chex.assert_trees_all_equal(jax.device_get(one), jax.device_get(saved))
  chex.assert_trees_all_equal(jax.device_get(data), jax.device_get(saved))


def test_mesh_shapes_are_checked():
  with pytest.raises(ValueError, match="needs 16 devices; there are 8"):
    parallel.make_mesh("mesh", "fsdp=4,model=4")
  with pytest.raises(ValueError, match="axes"):
    parallel.make_mesh("mesh", "tensor=8")
  with pytest.raises(ValueError, match="must divide"):
    parallel.make_mesh("mesh", "data=2,model=4", dcn_mesh_shape="model=3")
  mesh = parallel.make_mesh("mesh", "data=-1,model=2")
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}


def test_kill_then_resume_tensor_parallel_is_bit_identical(tmp_path):
  """SIGKILL a tensor-parallel run mid-way and resume it: the parameters an uninterrupted run
  of the same layout reaches, bit for bit."""
  num_steps, mesh = 60, dict(parallel="mesh", mesh_shape="data=2,fsdp=2,model=2")
  script = str(pathlib.Path(__file__).resolve().parent / "user_parts.py")
  command = [sys.executable, script, "tensor_parallel", str(tmp_path / "killed"), str(num_steps)]
  command += [f"{k}={v}" for k, v in mesh.items()]
  resume = functools.partial(  # the script's own call
    user_parts.fit, "tensor_parallel", str(tmp_path / "killed"), num_steps, **mesh
  )
  assert kill.kill_then_rerun(command, tmp_path / "killed", 25, resume=resume) < num_steps
  full, _ = user_parts.fit("tensor_parallel", str(tmp_path / "full"), num_steps, **mesh)
  config = dl.FitConfig(num_steps=num_steps, batch_size=32, **mesh)
  resumed = dl.training.loop.restore(
    user_parts.tensor_parallel_task(), str(tmp_path / "killed"), config
  )
  assert int(resumed.step) == num_steps
  assert resumed.params["Dense_0"]["kernel"].sharding == full.params["Dense_0"]["kernel"].sharding
  chex.assert_trees_all_equal(jax.device_get(full), jax.device_get(resumed))


def _lm_task() -> dl.Task:
  """A tiny decoder_lm (RoPE, GQA, SwiGLU) on the first 32 characters of `pydoc_text` windows."""
  arrays = {k: v[:, :32].astype(np.int32) for k, v in dl.data.load("pydoc_text", "train").items()}
  data = {"input": arrays["tokens"][:640], "label": arrays["label"][:640]}
  model = dl.models.create(
    "decoder_lm",
    num_classes=98,
    width=32,
    depth=1,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    max_len=32,
  )
  return dl.task(
    model=model,
    objective=dl.core.objectives.next_token,
    optimizer=optax.adamw(3e-3),
    train=data,
    validation_fraction=0,  # the train losses are compared: no evaluation to compile
  )


def test_the_modern_lm_trains_tensor_parallel_as_on_one_device(tmp_path):
  task = _lm_task()
  common = dict(COMMON, batch_size=16, log_every=5)
  ref, ref_history = dl.fit(task, str(tmp_path / "jit"), **common)
  # All three axes at once, and the model axis alone (where 4 heads do not divide 8); the
  # MLP tests above take every layout.
  for mesh_shape in ("data=2,fsdp=2,model=2", "model=8"):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # 4 heads do not divide model=8: replicated, said
      state, history = dl.fit(
        task, str(tmp_path / mesh_shape), parallel="mesh", mesh_shape=mesh_shape, **common
      )
    chex.assert_trees_all_close(jax.device_get(state.params), ref.params, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
      [r["loss"] for r in history["train"]], [r["loss"] for r in ref_history["train"]], rtol=1e-5
    )
    sizes = parallel.mesh_sizes("mesh", mesh_shape, 8)
    _check_layout(state, task, sizes)
    assert "model" in tuple(state.params["block_0"]["mlp"]["gate"]["kernel"].sharding.spec)
