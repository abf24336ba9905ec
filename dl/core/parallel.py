"""Where arrays live: device meshes, the sharding of every state leaf, pmap replication.

The step never changes; these functions say how its inputs and outputs are laid out, and
`dl.training.compile` turns that into `jax.jit(..., in_shardings, out_shardings)` or `jax.pmap`.

Mesh axes (`AXES`):
  "data"   the batch is split, parameters are replicated;
  "fsdp"   the batch is split *and* parameters and optimizer state are sharded (ZeRO-3);
  "model"  tensor parallel: attention heads and MLP hidden units are split (Megatron), the
           batch is not.
A batch is split over "data" and "fsdp" (`BATCH_AXES`).

Each state leaf's sharding is decided in this order (`state_shardings`):
  1. the model's own annotations: the axis names a parameter was created with (Linen
     `nn.with_logical_partitioning` / `nn.with_partitioning`, NNX `nnx.with_partitioning`),
     mapped to mesh axes by logical axis rules (`LOGICAL_RULES`, MaxText's
     `logical_axis_rules`; a mesh axis name stands for itself);
  2. the user's rules: (regex on the leaf's path, axis names per dimension), first match wins
     (big_vision's `sharding_strategy`, Keras's `LayoutMap`);
  3. the shape rule for what is left: the largest dimension the "fsdp" axis divides.
A leaf of the optimizer state follows its parameter: its path ends with the parameter's
("opt_state/0/mu/Dense_0/kernel" ends with "Dense_0/kernel"), its shape is the same.
"""

import contextlib
import dataclasses
import functools
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over these

# Logical axis name -> mesh axes. Parameters: "embed" (the model width) over fsdp, heads, MLP
# hidden units and the vocabulary over model (Megatron-style tensor parallelism). Activations
# ("act_*"): the batch over data and fsdp, heads and hidden units over model, the width whole.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", BATCH_AXES),
  ("embed", "fsdp"),
  ("mlp", "model"),
  ("heads", "model"),
  ("kv_heads", "model"),
  ("vocab", "model"),
  ("head_dim", None),
  ("classes", None),
  ("norm", None),
  ("length", None),
  ("conv_in", "fsdp"),
  ("conv_out", "model"),
  ("act_batch", BATCH_AXES),
  ("act_length", None),
  ("act_embed", None),
  ("act_heads", "model"),
  ("act_kv_heads", "model"),
  ("act_head_dim", None),
  ("act_mlp", "model"),
  ("act_vocab", "model"),
)

Rules = Sequence[tuple[str, Any]]


def path_name(path) -> str:
  """A pytree path as "a/b/0/c" (dict keys, attribute names and indices joined by "/")."""
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def parse_mesh_shape(text: str) -> dict[str, int]:
  """Parses "data=2,fsdp=2,model=2" into {"data": 2, ...}; -1 means "all remaining devices"."""
  shape = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, size = part.partition("=")
    if name not in AXES or not size.lstrip("-").isdigit():
      raise ValueError(
        f"mesh_shape must look like 'data=2,fsdp=2,model=2' with axes {AXES}; got {text!r}."
      )
    shape[name] = int(size)
  return shape


def mesh_sizes(mode: str, mesh_shape: str, num_devices: int) -> dict[str, int]:
  """The size of each of `AXES` for `mode` ("data", "fsdp", "mesh"), `mesh_shape` applied."""
  preset = {"data": {"data": num_devices}, "fsdp": {"fsdp": num_devices}}.get(mode, {})
  if mode == "mesh" and not mesh_shape:
    raise ValueError("parallel='mesh' lays devices out as mesh_shape says, e.g. 'fsdp=4,model=2'.")
  shape = {axis: 1 for axis in AXES} | (parse_mesh_shape(mesh_shape) if mesh_shape else preset)
  known = math.prod(v for v in shape.values() if v != -1)
  shape = {k: (num_devices // known if v == -1 else v) for k, v in shape.items()}
  if math.prod(shape.values()) != num_devices:
    raise ValueError(
      f"mesh shape {shape} needs {math.prod(shape.values())} devices; there are {num_devices}."
    )
  return shape


def make_mesh(mode: str, mesh_shape: str = "", devices=None, dcn_mesh_shape: str = "") -> Mesh:
  """A ("data", "fsdp", "model") mesh over `devices` (default: all, over all processes).

  Args:
    mode: "data" puts every device on the data axis, "fsdp" on the fsdp axis; "mesh" takes
      the layout from `mesh_shape` alone.
    mesh_shape: overrides the preset, e.g. "data=2,fsdp=2,model=2" (-1: the remaining devices).
    devices: devices to use.
    dcn_mesh_shape: how much of each axis spans slices or hosts (the data-center network),
      e.g. "data=2": a hybrid mesh (`mesh_utils.create_hybrid_device_mesh`) keeps the rest of
      each axis within a slice (a process, on CPU and GPU), where links are fast. Each size
      must divide its axis.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_sizes(mode, mesh_shape, len(devices))
  sizes = tuple(shape[axis] for axis in AXES)
  auto = (AxisType.Auto,) * len(AXES)  # shardings say the layout; XLA inserts collectives
  if not dcn_mesh_shape:
    return jax.make_mesh(sizes, AXES, auto, devices=devices)
  dcn = {axis: 1 for axis in AXES} | parse_mesh_shape(dcn_mesh_shape)
  bad = [axis for axis in AXES if dcn[axis] < 1 or shape[axis] % dcn[axis]]
  if bad:
    raise ValueError(
      f"dcn_mesh_shape {dcn_mesh_shape!r} must divide mesh shape {shape} on each axis; it "
      f"does not on {bad}."
    )
  ici = tuple(shape[axis] // dcn[axis] for axis in AXES)
  # Several slices (TPU pods): one granule each; else (CPU, GPU, one slice) one per process.
  granules = len({getattr(d, "slice_index", 0) for d in devices}) == 1
  array = mesh_utils.create_hybrid_device_mesh(
    ici, tuple(dcn[axis] for axis in AXES), devices, process_is_granule=granules
  )
  return Mesh(array, AXES, axis_types=auto)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules = LOGICAL_RULES):
  """The mesh and logical axis rules in force while a step is traced: `nn.with_logical_constraint`
  and `jax.lax.with_sharding_constraint(x, P(...))` in model code resolve against them."""
  # The abstract mesh: `jax.set_mesh` may not be entered inside `jax.jit`, where steps trace.
  with (
    jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
    nn.logical_axis_rules(_flax_rules(rules)),
  ):
    yield


def _flax_rules(rules: Rules) -> tuple[tuple[str, Any], ...]:
  """`rules` plus each mesh axis standing for itself, as Flax's `logical_axis_rules` takes them."""
  return (*rules, *((axis, axis) for axis in AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 2**10) -> P:
  """Shards the largest dimension divisible by the fsdp axis; small arrays stay replicated."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      return P(*(None,) * dim, "fsdp")
  return P()


@dataclasses.dataclass(frozen=True)
class LeafLayout:
  """How one state leaf is laid out, and why.

  Attributes:
    path: the leaf's path in the state, e.g. "params/Dense_0/kernel".
    shape, dtype: the leaf's.
    spec: its `PartitionSpec` over the mesh axes.
    source: "model" (its parameter's annotation), "rule" (a user rule), "shape" (the fsdp
      shape rule) or "replicated" (too small, or nothing divides it).
    names: the axis names that decided it (before divisibility was checked), if any.
    param: the parameter whose annotation it follows (else its own path).
    note: why a dimension was left whole, if one was (e.g. not divisible by its axis).
  """

  path: str
  shape: tuple[int, ...]
  dtype: Any
  spec: P
  source: str
  names: tuple | None = None
  param: str = ""
  note: str = ""

  def shards(self, mesh_shape: Mapping[str, int]) -> int:
    """Into how many pieces the leaf is split (the product of its spec's mesh axes)."""
    return math.prod(mesh_shape[axis] for axis in _spec_axes(self.spec))

  def nbytes(self) -> int:
    """The leaf's bytes, whole (on one device)."""
    return math.prod(self.shape) * np.dtype(self.dtype).itemsize

  def device_bytes(self, mesh_shape: Mapping[str, int]) -> int:
    """Bytes of the leaf on each device that holds a piece of it."""
    pieces = (
      -(-size // math.prod(mesh_shape[a] for a in _entry_axes(entry)))
      for size, entry in zip(self.shape, tuple(self.spec) + (None,) * len(self.shape))
    )
    return math.prod(pieces) * np.dtype(self.dtype).itemsize


def _entry_axes(entry) -> tuple[str, ...]:
  return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def _spec_axes(spec: P) -> list[str]:
  return [axis for entry in spec for axis in _entry_axes(entry)]


def layout_leaves(
  abstract_state: Any,
  mesh: Mesh,
  *,
  param_axes: Mapping[str, tuple | None] | None = None,
  rules: Sequence[tuple[str, Any]] = (),
  logical_rules: Rules = LOGICAL_RULES,
  fsdp_min_size: int = 2**10,
) -> list[LeafLayout]:
  """Decides each state leaf's layout (see the module docstring for the order).

  Args:
    abstract_state: the state's shapes and dtypes (`jax.eval_shape(init)`).
    mesh: the device mesh.
    param_axes: {parameter path: axis names per dimension, or None} from the model
      (`dl.Linen(...).axes(batch)`); a leaf whose path ends with a parameter's path and has
      its rank follows it.
    rules: the user's (regex, axis names) rules, matched with `re.search` on leaf paths.
    logical_rules: logical axis name -> mesh axes.
    fsdp_min_size: arrays with fewer elements stay replicated under the shape rule.

  Returns:
    One `LeafLayout` per leaf, in `jax.tree.leaves` order.

  Raises:
    ValueError: for an axis name that no rule maps and that is no mesh axis, or a rule whose
      names do not match its leaf's rank.
  """
  param_axes = dict(param_axes or {})
  by_length = sorted(param_axes, key=lambda p: -len(p))  # the longest matching path wins
  compiled = [(re.compile(pattern), names) for pattern, names in rules]
  mapping = {}
  for logical, axes in (*logical_rules, *((axis, axis) for axis in AXES)):
    mapping.setdefault(logical, axes)  # the first rule for a name wins, as in Flax
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
    name, shape = path_name(path), tuple(leaf.shape)
    names, source = None, "shape"
    param = next((p for p in by_length if name == p or name.endswith("/" + p)), name)
    if param_axes.get(param) and len(param_axes[param]) == len(shape):
      names, source = param_axes[param], "model"
    else:
      match = next(((r, n) for r, n in compiled if r.search(name)), None)
      if match is not None:
        names, source = tuple(match[1]), "rule"
        if len(names) != len(shape):
          raise ValueError(
            f"sharding rule {match[0].pattern!r} gives {len(names)} axis names {names} to "
            f"{name}, which has shape {shape}; give one name (or None) per dimension."
          )
    if names is None:
      spec, note = fsdp_spec(shape, mesh.shape["fsdp"], fsdp_min_size), ""
    else:
      spec, note = _resolve(name, shape, names, mapping, mesh)
    if not _spec_axes(spec) and source == "shape":
      source = "replicated"
    leaves.append(LeafLayout(name, shape, leaf.dtype, spec, source, names, param, note))
  return leaves


def _resolve(name: str, shape, names: tuple, mapping: dict, mesh: Mesh) -> tuple[P, str]:
  """Axis names -> a spec over `mesh`: each mesh axis used once; a dimension its axes do not
  divide is left whole (the note says which)."""
  used, entries, notes = set(), [], []
  for dim, (size, logical) in enumerate(zip(shape, names)):
    if logical is None:
      entries.append(None)
      continue
    axes = []
    for one in _entry_axes(logical):
      if one not in mapping:
        raise ValueError(
          f"{name} is annotated with axis name {one!r}, which no logical axis rule maps and "
          f"which is no mesh axis {AXES}; add a rule, e.g. logical_axis_rules=(({one!r}, "
          "'model'),)."
        )
      axes += [a for a in _entry_axes(mapping[one]) if a not in used and mesh.shape[a] > 1]
    count = math.prod(mesh.shape[a] for a in axes)
    if axes and size % count:
      notes.append(f"dimension {dim} ({size}) is not divisible by {'x'.join(axes)} ({count})")
      axes = []
    used.update(axes)
    entries.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  while entries and entries[-1] is None:
    entries.pop()
  return P(*entries), "; ".join(notes)


def state_shardings(
  abstract_state: Any,
  mesh: Mesh,
  *,
  param_axes: Mapping[str, tuple | None] | None = None,
  rules: Sequence[tuple[str, Any]] = (),
  logical_rules: Rules = LOGICAL_RULES,
  max_replicated_bytes: float = math.inf,
) -> Any:
  """A pytree of `NamedSharding`s for `abstract_state` (see `layout_leaves`).

  Warns, once per parameter, where a dimension its names shard is not divisible (that
  dimension is replicated instead).

  Raises:
    ValueError: when a leaf larger than `max_replicated_bytes` would be replicated on a
      mesh whose fsdp or model axis could shard it, naming the leaf and how to shard it.
  """
  leaves = layout_leaves(
    abstract_state, mesh, param_axes=param_axes, rules=rules, logical_rules=logical_rules
  )
  check_replication(leaves, mesh, max_replicated_bytes)
  for param in dict.fromkeys(leaf.param for leaf in leaves if leaf.note):  # once per parameter
    leaf = next(leaf for leaf in leaves if leaf.param == param)
    warnings.warn(
      f"dl: {leaf.path} {leaf.shape} is replicated along a dimension: {leaf.note}.", stacklevel=2
    )
  specs = [NamedSharding(mesh, leaf.spec) for leaf in leaves]
  return jax.tree.unflatten(jax.tree.structure(abstract_state), specs)


def check_replication(leaves: Sequence[LeafLayout], mesh: Mesh, max_bytes: float) -> None:
  """Raises if a leaf over `max_bytes` is whole on every device of a mesh that could split it."""
  if mesh.shape["fsdp"] * mesh.shape["model"] == 1:
    return  # data parallel: replication is the layout asked for
  for leaf in sorted(leaves, key=lambda leaf: -leaf.nbytes()):
    if leaf.nbytes() > max_bytes and not _spec_axes(leaf.spec):
      if leaf.note:
        why = leaf.note
      elif leaf.names:
        why = f"its axis names {leaf.names} map to no mesh axis larger than 1"
      else:
        why = "no annotation or rule names its axes, and " + (
          "the mesh has no fsdp axis for the shape rule"
          if mesh.shape["fsdp"] == 1
          else "fsdp divides none of its dimensions"
        )
      raise ValueError(
        f"{leaf.path} {leaf.shape} ({leaf.nbytes() / 2**20:.1f} MiB) would be replicated on "
        f"every device of mesh {dict(mesh.shape)} ({why}). Annotate it in the model "
        "(nn.with_logical_partitioning), add a sharding rule for its path, change the mesh, "
        f"or raise max_replicated_mb (now {max_bytes / 2**20:g})."
      )


def batch_sharding(mesh: Mesh, *, fused: bool = False) -> NamedSharding:
  """The batch axis split over all devices (behind a leading steps axis when `fused`)."""
  return NamedSharding(mesh, P(None, BATCH_AXES) if fused else P(BATCH_AXES))


def global_batch(
  local_batch: dict[str, np.ndarray], sharding: NamedSharding
) -> dict[str, jax.Array]:
  """Assembles this process's part of a batch into global arrays (one process: all of it)."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def fetch(tree: Any) -> Any:
  """The value of a pytree of arrays as numpy, whichever devices and processes hold them.

  Every process must call it: an array split across processes is gathered collectively.
  """

  def get(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return multihost_utils.process_allgather(x, tiled=True)
    return jax.device_get(x)

  return jax.tree.map(get, tree)


def shard_for_pmap(batch: dict[str, np.ndarray], num_devices: int, *, fused: bool = False):
  """Reshapes (B, ...) to (devices, B/devices, ...); (k, B, ...) to (devices, k, B/devices, ...)."""

  def split(x):
    axis = 1 if fused else 0
    b = x.shape[axis]
    if b % num_devices:
      raise ValueError(f"batch size {b} must be divisible by the {num_devices} devices for pmap.")
    x = x.reshape(*x.shape[:axis], num_devices, b // num_devices, *x.shape[axis + 1 :])
    return np.moveaxis(x, axis, 0)

  return {k: split(np.asarray(v)) for k, v in batch.items()}


def replicate(tree: Any, devices=None) -> Any:
  """Copies a pytree onto every local device, with a leading device axis (for pmap).

  One compiled program for the whole tree: broadcast leaf by leaf, op by op, each leaf
  shape compiled a program of its own.
  """
  mesh = Mesh(np.asarray(jax.local_devices() if devices is None else devices), ("devices",))
  tree = jax.device_put(tree, NamedSharding(mesh, P()))  # wherever its leaves were
  return _replicate(mesh)(tree)


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a replicated pytree (`replicate`'s layout), on that device."""
  leaves = jax.tree.leaves(tree)
  if not leaves or not isinstance(leaves[0], jax.Array) or len(leaves[0].devices()) == 1:
    return jax.tree.map(lambda x: x[0], tree)
  shards = sorted(leaves[0].addressable_shards, key=lambda s: s.index[0].start or 0)
  mesh = Mesh(np.asarray([s.device for s in shards]), ("devices",))
  return jax.tree.map(lambda x: x.addressable_data(0), _unreplicate(mesh)(tree))


@functools.cache
def _replicate(mesh: Mesh) -> Callable[[Any], Any]:
  n = mesh.devices.size
  return jax.jit(
    lambda tree: jax.tree.map(lambda x: jax.numpy.broadcast_to(x, (n, *x.shape)), tree),
    out_shardings=NamedSharding(mesh, P("devices")),
  )


@functools.cache
def _unreplicate(mesh: Mesh) -> Callable[[Any], Any]:
  # Every device ends with the first copy, so each device's own piece is a whole copy.
  return jax.jit(
    lambda tree: jax.tree.map(lambda x: x[0], tree), out_shardings=NamedSharding(mesh, P())
  )
