"""The memory plan of a run, from shapes alone: `plan(task, mesh_shape="fsdp=4,model=2")`.

Before a large run is started, `plan` says what each device will hold and what the step
costs, without allocating the state: the state's shapes come from `jax.eval_shape` of the
trainable's init, each leaf is laid out exactly as `dl.fit` would lay it out (the same
`dl.training.loop` placement: the model's annotations, the rules, the fsdp shape rule, and
the replication check that stops a run before anything is compiled), and the one-step
program is lowered for `jax.ShapeDtypeStruct` arguments that carry the shardings, then
compiled, for XLA's memory and cost analysis.

Per device: the parameters ("params"), the optimizer state ("opt_state"), the gradients
(as large as the parameters, and laid out like them) and the rest of the state; with the
compiled step, XLA's argument, output, aliased (donated) and temporary bytes, its peak
estimate, the generated code, and the FLOPs of one step.

A plan for more devices than there are: `devices=256` lays 256 virtual CPU devices out
(`jax_num_cpu_devices`), which must happen before JAX starts its backends, so call it first
in a fresh process (as `python -m dl.cli.plan --devices 256` does).
"""

import dataclasses
import functools
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from dl.core import parallel
from dl.recipes import config as config_lib
from dl.training import loop, options, placement
from dl.training.protocols import TrainableDefaults, optional

# The figures of `jax.stages.Compiled.memory_analysis()`, by the name the plan gives them.
_MEMORY_FIELDS = {
  "argument": "argument_size_in_bytes",
  "output": "output_size_in_bytes",
  "alias": "alias_size_in_bytes",
  "temp": "temp_size_in_bytes",
  "generated_code": "generated_code_size_in_bytes",
  "peak": "peak_memory_in_bytes",
}
NOT_REPORTED = "not reported by this backend"
GROUPS = ("params", "opt_state", "other")


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  """One state leaf: where it lives and what it costs.

  Attributes:
    path: the leaf's path in the state, e.g. "params/Block_0/mlp/up/kernel".
    shape: its global shape.
    dtype: its dtype's name.
    spec: its `PartitionSpec` over the mesh axes, as text ("P('fsdp', 'model')").
    source: what decided the layout: "model", "rule", "shape" or "replicated"
      (`dl.core.parallel.LeafLayout`).
    group: "params", "opt_state" or "other" (the state's first path component).
    bytes: the whole leaf's bytes.
    device_bytes: the bytes of the leaf on each device (its shard).
    note: why a dimension was left whole, if one was.
  """

  path: str
  shape: tuple[int, ...]
  dtype: str
  spec: str
  source: str
  group: str
  bytes: int
  device_bytes: int
  note: str = ""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What each device holds, and what one step costs, before anything is allocated.

  Byte counts are per device unless named otherwise.

  Attributes:
    name: the trainable's name.
    mode: the compile mode (`dl.training.placement.MESH_MODES`).
    mesh_shape: the size of each mesh axis, e.g. {"data": 1, "fsdp": 64, "model": 4}.
    batch_size: examples per step.
    batch: {key: (global shape, dtype name)} of one step's batch.
    leaves: every state leaf, widest on a device first.
    num_params: parameters in all (elements of the "params" leaves).
    params_bytes: the parameters on each device.
    opt_state_bytes: the optimizer state on each device.
    grads_bytes: the gradients on each device (laid out like the parameters).
    other_bytes: the rest of the state on each device (step, rng, model state).
    replicated_fraction: the share of the parameters' bytes held whole on every device of
      a mesh with more than one device (0 on one device).
    memory: XLA's figures for the compiled step ({"argument", "output", "alias", "temp",
      "generated_code", "peak"}: bytes), those the backend reports; None when not compiled
      or none are reported.
    memory_note: why `memory` is None, or "".
    flops_per_device: XLA's FLOPs of one step on each device, or None.
    lower_seconds: how long tracing and lowering the step took (None: not compiled).
    compile_seconds: how long XLA compiled it (None: not compiled).
  """

  name: str
  mode: str
  mesh_shape: Mapping[str, int]
  batch_size: int
  batch: Mapping[str, tuple[tuple[int, ...], str]]
  leaves: tuple[LeafPlan, ...]
  num_params: int
  params_bytes: int
  opt_state_bytes: int
  grads_bytes: int
  other_bytes: int
  replicated_fraction: float
  memory: Mapping[str, int] | None = None
  memory_note: str = ""
  flops_per_device: float | None = None
  lower_seconds: float | None = None
  compile_seconds: float | None = None

  @property
  def num_devices(self) -> int:
    return math.prod(self.mesh_shape.values())

  @property
  def total_bytes(self) -> int:
    """The state and the gradients on each device (activations come on top: `memory`)."""
    return self.params_bytes + self.opt_state_bytes + self.grads_bytes + self.other_bytes

  @property
  def step_bytes(self) -> int | None:
    """XLA's bytes for one step on each device: arguments, outputs not donated into them,
    and temporaries (None without `memory`)."""
    if self.memory is None:
      return None
    m = self.memory
    return m["argument"] + m["output"] - m["alias"] + m["temp"]

  def to_dict(self) -> dict[str, Any]:
    """The plan as plain JSON-able values (tuples as lists)."""
    out = dataclasses.asdict(self)
    out["mesh_shape"] = dict(self.mesh_shape)
    out["num_devices"] = self.num_devices
    out["total_bytes"] = self.total_bytes
    out["step_bytes"] = self.step_bytes
    return out

  def format(self, max_rows: int | None = 30) -> str:
    """The table: one row per leaf (the `max_rows` widest; None: all), then the totals."""
    return "\n".join(_header(self) + _leaf_rows(self.leaves, max_rows) + _totals(self))

  def __str__(self) -> str:
    return self.format()


def plan(
  trainable_or_config: Any,
  *,
  mesh_shape: str | None = None,
  parallel: str | None = None,
  batch_size: int | None = None,
  devices: int | None = None,
  compile: bool = True,  # noqa: A002  (the step is compiled, as `jax.stages` says)
  example_shapes: Mapping[str, tuple[int, ...]] | None = None,
  **fit_overrides,
) -> Plan:
  """Plans the memory of training `trainable_or_config` on a mesh, from shapes alone.

  Args:
    trainable_or_config: a `dl.Task` (or any `dl.training.protocols.Trainable`), or a config
      (`ml_collections.ConfigDict`, dict, `dl.TrainConfig`) that `dl.build` turns into one,
      with its loop fields (`dl.recipes.from_config.fit_config`).
    mesh_shape: the mesh, e.g. "data=2,fsdp=2,model=2" (None: the config's).
    parallel: a mesh mode, "data", "fsdp" or "mesh" (None: the config's if it is a mesh
      mode, else "mesh").
    batch_size: examples per step (None: the config's).
    devices: plan for this many virtual CPU devices (sets `jax_platforms="cpu"` and
      `jax_num_cpu_devices`, which only works before JAX starts its backends); None: the
      devices there are.
    compile: also lower and compile the step for XLA's memory and cost analysis.
    example_shapes: {batch key: the shape of one example} replacing the data's, e.g.
      {"input": (2048,), "label": (2048,)} to plan a longer sequence than the data has.
    **fit_overrides: other `dl.FitConfig` fields, e.g. `max_replicated_mb=16`,
      `sharding_rules=...`.

  Returns:
    The `Plan`; `print(plan)` shows its table.

  Raises:
    ValueError: for a mode that is no mesh mode, a batch the mesh cannot split, a device
      count JAX was started with otherwise, or, as `dl.fit` raises it before compiling, a
      leaf over `max_replicated_mb` that would be replicated on a mesh that could shard it.
  """
  if devices is not None:
    use_cpu_devices(devices)
  trainable, c = _parts(trainable_or_config, mesh_shape, parallel, batch_size, fit_overrides)
  abstract_state = jax.eval_shape(functools.partial(loop._init_members, trainable, c.members()))
  layout = loop._layout(trainable, c, abstract_state)  # `fit`'s: raises on replication
  leaves = _leaves(trainable, layout, abstract_state, c)
  batch = _abstract_batch(trainable, c, layout, example_shapes)
  figures = _state_figures(leaves, dict(layout.mesh.shape))
  compiled = _compile(trainable, layout, abstract_state, batch) if compile else {}
  return Plan(
    name=trainable.name,
    mode=c.parallel,
    mesh_shape=dict(layout.mesh.shape),
    batch_size=c.batch_size,
    batch={k: (tuple(x.shape), np.dtype(x.dtype).name) for k, x in batch.items()},
    **figures,
    **compiled,
  )


def use_cpu_devices(count: int) -> None:
  """Makes JAX start `count` virtual CPU devices (before its backends start).

  Raises:
    ValueError: when JAX already started with another number of devices.
  """
  try:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:  # backends already started: fine if they have what is asked
    if jax.device_count() != count:
      raise ValueError(
        f"devices={count} asks for {count} virtual CPU devices, but JAX already started "
        f"with {jax.device_count()}; plan in a fresh process (python -m dl.cli.plan "
        f"--devices {count}) or before anything runs on a device."
      ) from e


def _parts(source: Any, mesh_shape, mode, batch_size, overrides) -> tuple[Any, options.FitConfig]:
  """(trainable, loop config) from a trainable or a config, the plan's arguments applied."""
  if _is_config(source):
    from dl.recipes import from_config  # builds on training; imported when a config is planned

    trainable = from_config.build(source)
    c = from_config.fit_config(source, trainable)
  else:
    trainable, c = source, options.FitConfig()
  if mode is None:
    mode = c.parallel if c.parallel in placement.MESH_MODES else "mesh"
  if mode not in placement.MESH_MODES:
    raise ValueError(
      f"plan lays the state out on a mesh: parallel must be one of {placement.MESH_MODES} "
      f"(one device: parallel='data' with devices=1); got {mode!r}."
    )
  changes = dict(overrides, parallel=mode)
  if mesh_shape is not None:
    changes["mesh_shape"] = mesh_shape
  if batch_size is not None:
    changes["batch_size"] = batch_size
  return trainable, dataclasses.replace(c, **changes)


def _is_config(source: Any) -> bool:
  return isinstance(source, (ml_collections.ConfigDict, Mapping, config_lib.TrainConfig))


def _leaves(trainable, layout: placement.Placement, abstract_state, c) -> list[parallel.LeafLayout]:
  """Each leaf's layout and why; the specs are those of the placement `fit` uses."""
  leaves = parallel.layout_leaves(
    abstract_state,
    layout.mesh,
    param_axes=optional(trainable, TrainableDefaults.param_axes)(),
    rules=c.sharding_rules,
    logical_rules=layout.logical_rules,
  )
  specs = [s.spec for s in jax.tree.leaves(layout.state_shardings)]
  assert [leaf.spec for leaf in leaves] == specs, "plan and fit lay the state out differently"
  return leaves


def _abstract_batch(trainable, c: options.FitConfig, layout, example_shapes) -> dict[str, Any]:
  """One step's batch as `ShapeDtypeStruct`s split over the mesh's batch axes.

  Shapes come from `trainable.train.example()` (a `dl.Task`'s data), else from the first
  batch `trainable.batches(...)` draws.
  """
  example = getattr(getattr(trainable, "train", None), "example", None)
  if example is not None:
    shapes = {k: ((c.batch_size, *x.shape[1:]), x.dtype) for k, x in example().items()}
  else:
    batches = trainable.batches(c.batch_size, seed=c.seed, shard_index=0, num_shards=1)
    shapes = {k: (np.shape(x), np.asarray(x).dtype) for k, x in batches.next().items()}
    getattr(batches, "close", lambda: None)()
  for key, shape in (example_shapes or {}).items():
    if key not in shapes:
      raise ValueError(f"example_shapes names {key!r}; the batch has {sorted(shapes)}.")
    shapes[key] = ((c.batch_size, *shape), shapes[key][1])
  split_size = optional(trainable, TrainableDefaults.split_size)(c.batch_size)
  if split_size % layout.batch_shards:
    raise ValueError(
      f"batch_size ({c.batch_size}) must be divisible by the {layout.batch_shards} devices "
      f"that mesh {dict(layout.mesh.shape)} splits it over (data x fsdp)."
    )
  sharding = parallel.batch_sharding(layout.mesh)
  return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in shapes.items()}


def _state_figures(leaves: list[parallel.LeafLayout], mesh_shape: dict[str, int]) -> dict:
  """The per-leaf rows and the per-device totals of the state."""
  rows = tuple(
    sorted(
      (_leaf_plan(leaf, mesh_shape) for leaf in leaves),
      key=lambda row: (-row.device_bytes, -row.bytes, GROUPS.index(row.group), row.path),
    )
  )
  totals = {group: sum(r.device_bytes for r in rows if r.group == group) for group in GROUPS}
  params = [r for r in rows if r.group == "params"]
  whole = sum(r.bytes for r in params if r.device_bytes == r.bytes)
  devices = math.prod(mesh_shape.values())
  replicated = whole / max(sum(r.bytes for r in params), 1) if devices > 1 else 0.0
  return dict(
    leaves=rows,
    num_params=sum(math.prod(r.shape) for r in params),
    params_bytes=totals["params"],
    opt_state_bytes=totals["opt_state"],
    grads_bytes=totals["params"],
    other_bytes=totals["other"],
    replicated_fraction=replicated,
  )


def _leaf_plan(leaf: parallel.LeafLayout, mesh_shape: dict[str, int]) -> LeafPlan:
  first = leaf.path.split("/")[0]
  return LeafPlan(
    path=leaf.path,
    shape=leaf.shape,
    dtype=np.dtype(leaf.dtype).name,
    spec=str(leaf.spec),
    source=leaf.source,
    group=first if first in GROUPS else "other",
    bytes=leaf.nbytes(),
    device_bytes=leaf.device_bytes(mesh_shape),
    note=leaf.note,
  )


def _compile(trainable, layout: placement.Placement, abstract_state, batch) -> dict[str, Any]:
  """XLA's memory and cost analysis of the one-step program `fit` compiles."""
  step = layout.compile(trainable.step, fused=False)
  start = time.perf_counter()
  lowered = step.lower(layout.restore_target(abstract_state), batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  out = dict(
    lower_seconds=lowered_at - start,
    compile_seconds=time.perf_counter() - lowered_at,
    flops_per_device=_flops(compiled),
  )
  memory = _memory(compiled)
  return out | dict(memory=memory, memory_note="" if memory else NOT_REPORTED)


def _memory(compiled) -> dict[str, int] | None:
  """The backend's memory figures of the compiled step; None if it reports none (jax#18954)."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):
    return None
  if stats is None:
    return None
  figures = {k: int(getattr(stats, name, 0) or 0) for k, name in _MEMORY_FIELDS.items()}
  return figures if any(figures.values()) else None


def _flops(compiled) -> float | None:
  costs = compiled.cost_analysis()
  if isinstance(costs, (list, tuple)):  # older jax: one dict per program
    costs = costs[0] if costs else None
  flops = (costs or {}).get("flops")
  return float(flops) if flops is not None and flops >= 0 else None


def _size(num_bytes: float) -> str:
  """Bytes in the largest binary unit that keeps the number >= 1."""
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:.2f} {unit}"
  return f"{num_bytes:.0f} B"


def _header(p: Plan) -> list[str]:
  mesh = ",".join(f"{axis}={size}" for axis, size in p.mesh_shape.items())
  batch = ", ".join(f"{k} {shape} {dtype}" for k, (shape, dtype) in p.batch.items())
  param_bytes = sum(r.bytes for r in p.leaves if r.group == "params")
  return [
    f"plan: {p.name}, parallel={p.mode!r} on mesh {mesh} ({p.num_devices} devices)",
    f"batch: {p.batch_size} examples per step ({batch})",
    f"parameters: {p.num_params:,} ({_size(param_bytes)} in all)",
    "",
  ]


def _leaf_rows(leaves: tuple[LeafPlan, ...], max_rows: int | None) -> list[str]:
  shown = leaves if max_rows is None else leaves[:max_rows]
  table = [("leaf", "shape", "dtype", "spec", "source", "per device")]
  for r in shown:
    table.append((r.path, str(r.shape), r.dtype, r.spec, r.source, _size(r.device_bytes)))
  widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
  rest = leaves[len(shown) :]
  if rest:
    rest_bytes = sum(r.device_bytes for r in rest)
    lines.append(f"... {len(rest)} more leaves, {_size(rest_bytes)} per device")
  return [*lines, ""]


def _mib_gib(num_bytes: int) -> str:
  return f"{num_bytes / 2**20:>10.2f} {num_bytes / 2**30:>10.3f}"


def _totals(p: Plan) -> list[str]:
  rows = [
    ("parameters", p.params_bytes),
    ("optimizer state", p.opt_state_bytes),
    ("gradients", p.grads_bytes),
    ("other state", p.other_bytes),
    ("state + gradients", p.total_bytes),
  ]
  lines = ["per device:           MiB        GiB"]
  lines += [f"  {name:<17} {_mib_gib(b)}" for name, b in rows]
  lines.append(f"replicated: {100 * p.replicated_fraction:.2f}% of the parameters' bytes")
  return lines + _compiled_lines(p)


def _compiled_lines(p: Plan) -> list[str]:
  if p.compile_seconds is None:
    return ["compiled step: not compiled"]
  lines = [
    f"compiled step (lowered in {p.lower_seconds:.1f} s, compiled in {p.compile_seconds:.1f} s):"
  ]
  if p.memory is None:
    lines.append(f"  memory: {p.memory_note}")
  else:
    for name, b in p.memory.items():
      shown = _mib_gib(b) if b else f"{'0 (' + NOT_REPORTED + ')':>21}"
      lines.append(f"  {name.replace('_', ' '):<17} {shown}")
    estimate = f"{_mib_gib(p.step_bytes)}  (argument + output - alias + temp)"
    lines.append(f"  {'step estimate':<17} {estimate}")
  if p.flops_per_device is None:
    return [*lines, f"  flops: {NOT_REPORTED}"]
  total = p.flops_per_device * p.num_devices
  return [*lines, f"  flops: {p.flops_per_device:.4g} per device, {total:.4g} in all"]
