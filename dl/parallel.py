"""Where arrays live: device meshes, data-parallel and FSDP shardings, pmap replication.

The step never changes; these functions say how its inputs and outputs are laid out, and
`dl.training.compile` turns that into `jax.jit(..., in_shardings, out_shardings)` or `jax.pmap`.

Mesh axes: "data" (batch split, parameters replicated) and "fsdp" (batch split *and*
parameters and optimizer state sharded). A batch is split over both axes.
"""

import math
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch dimension is split over every device


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
  """Parses "data=2,fsdp=4" into {"data": 2, "fsdp": 4}; -1 means "all remaining devices"."""
  shape = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, size = part.partition("=")
    if name not in AXES or not size.lstrip("-").isdigit():
      raise ValueError(f"mesh_shape must look like 'data=2,fsdp=4' with axes {AXES}; got {text!r}.")
    shape[name] = int(size)
  return shape


def make_mesh(mode: str, mesh_shape: str = "", devices=None) -> Mesh:
  """A ("data", "fsdp") mesh over `devices` (default: all, over all processes).

  Args:
    mode: "data" puts every device on the data axis, "fsdp" on the fsdp axis.
    mesh_shape: overrides the preset, e.g. "data=2,fsdp=4" (-1: the remaining devices).
    devices: devices to use.
  """
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  shape = {"data": n, "fsdp": 1} if mode == "data" else {"data": 1, "fsdp": n}
  if mesh_shape:
    shape = {"data": 1, "fsdp": 1, **parse_mesh_shape(mesh_shape)}
    known = math.prod(v for v in shape.values() if v != -1)
    shape = {k: (n // known if v == -1 else v) for k, v in shape.items()}
  if math.prod(shape.values()) != n:
    raise ValueError(
      f"mesh shape {shape} needs {math.prod(shape.values())} devices; there are {n}."
    )
  return Mesh(np.asarray(devices).reshape(shape["data"], shape["fsdp"]), AXES)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 2**10) -> P:
  """Shards the largest dimension divisible by the fsdp axis; small arrays stay replicated."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      return P(*(None,) * dim, "fsdp")
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Shardings for a state pytree: FSDP-sharded where the mesh has an fsdp axis > 1."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp_size)), abstract_state
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
  """Reshapes (B, ...) to (devices, B / devices, ...); (k, B, ...) to (devices, k, B/devices, ...)."""

  def split(x):
    axis = 1 if fused else 0
    b = x.shape[axis]
    if b % num_devices:
      raise ValueError(f"batch size {b} must be divisible by the {num_devices} devices for pmap.")
    x = x.reshape(*x.shape[:axis], num_devices, b // num_devices, *x.shape[axis + 1 :])
    return np.moveaxis(x, axis, 0)

  return {k: split(np.asarray(v)) for k, v in batch.items()}


def replicate(tree: Any, devices=None) -> Any:
  """Copies a pytree onto every local device, with a leading device axis (for pmap)."""
  devices = jax.local_devices() if devices is None else devices
  sharding = NamedSharding(Mesh(np.asarray(devices), ("devices",)), P("devices"))
  return jax.tree.map(
    lambda x: jax.device_put(jax.numpy.broadcast_to(x, (len(devices), *np.shape(x))), sharding),
    tree,
  )


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a replicated pytree."""
  return jax.tree.map(lambda x: x[0], tree)
