"""How the training loop lays out state and batches for each compile mode.

  "jit"   one device: `jax.jit`, state donated.
  "pmap"  local devices: state replicated, batch split on a leading device axis, `lax.pmean`.
  "data"  a mesh, data parallel: params replicated, batch split (`jax.jit` + shardings).
  "fsdp"  a mesh, fully sharded: params and optimizer state split too.
  "mesh"  a mesh laid out as `mesh_shape` says over the axes data, fsdp and model (tensor
          parallel), e.g. "data=2,fsdp=2,model=2".

On a mesh, each state leaf is laid out by the model's annotations, then the user's rules,
then the fsdp shape rule (`dl.core.parallel.state_shardings`), and the step is traced under the
mesh and the logical axis rules, so activation constraints in model code resolve.

Each mode compiles the same pure step; only the layout differs. `MODES` lists them.
"""

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from dl.core import parallel
from dl.training import compile as compile_lib

MODES = ("jit", "pmap", "data", "fsdp", "mesh")
MESH_MODES = ("data", "fsdp", "mesh")


@dataclasses.dataclass(frozen=True)
class Placement:
  """Compiles the step for one mode and moves state and batches to where it expects them.

  Attributes:
    mode: one of `MODES`.
    mesh: the device mesh (mesh modes), else None.
    state_shardings: a pytree of shardings matching the state (mesh modes), else None.
    logical_rules: logical axis name -> mesh axes, in force while the step is traced.
  """

  mode: str
  mesh: Mesh | None = None
  state_shardings: Any = None
  logical_rules: parallel.Rules = parallel.LOGICAL_RULES

  @property
  def batch_shards(self) -> int:
    """Into how many pieces the batch axis is split (by "data" and "fsdp" on a mesh)."""
    if self.mesh is not None:
      return math.prod(self.mesh.shape[axis] for axis in parallel.BATCH_AXES)
    return jax.local_device_count() if self.mode == "pmap" else 1

  def _in_mesh(self, fn: Callable) -> Callable:
    """`fn` traced under the mesh and the logical axis rules (mesh modes)."""
    if self.mesh is None:
      return fn

    @functools.wraps(fn)
    def traced(*args, **kwargs):
      with parallel.mesh_context(self.mesh, self.logical_rules):
        return fn(*args, **kwargs)

    return traced

  def compile(self, step: Callable, *, fused: bool, unroll: bool = False) -> Callable:
    """The compiled (state, batch) -> (state, metrics), k fused steps when `fused` (written
    out as straight-line code when `unroll`: `dl.training.compile.scan_steps`)."""
    if self.mode == "jit":
      return compile_lib.jit_step(step, fused=fused, unroll=unroll)
    if self.mode == "pmap":
      if "axis_name" not in inspect.signature(step).parameters:
        raise ValueError(
          "parallel='pmap' averages gradients over devices inside the step, which needs a "
          "step taking axis_name; this one does not. Use parallel='data' (a mesh, where XLA "
          "inserts the collectives) instead."
        )
      return compile_lib.pmap_step(step, fused=fused, unroll=unroll)
    batch = parallel.batch_sharding(self.mesh, fused=fused)
    return compile_lib.mesh_step(
      self._in_mesh(step), self.state_shardings, batch, fused=fused, unroll=unroll
    )

  def init(self, init_fn: Callable[[], Any]) -> Any:
    """Runs `init_fn` straight into this layout (sharded modes never hold a full copy).

    Compiled as one program, as Flax's `jax.jit(model.init)`: run op by op, an
    initialisation compiles each of its hundreds of operations on its own.
    """
    if self.state_shardings is not None:
      return jax.jit(self._in_mesh(init_fn), out_shardings=self.state_shardings)()
    return self.put_state(jax.jit(init_fn)())

  def put_state(self, state: Any) -> Any:
    """Moves a plain state (e.g. just restored) into this layout."""
    if self.mode == "pmap":
      return parallel.replicate(state)
    if self.state_shardings is not None:
      return jax.device_put(state, self.state_shardings)
    return state

  def get_state(self, state: Any) -> Any:
    """The state as one logical copy (for checkpoints and evaluation)."""
    return parallel.unreplicate(state) if self.mode == "pmap" else state

  def restore_target(self, abstract_state: Any) -> Any:
    """What to restore a checkpoint into: shapes and dtypes, plus shardings on a mesh.

    Args:
      abstract_state: the state's shapes (`jax.eval_shape(init)`), one logical copy.
    """
    shardings = self.state_shardings
    if shardings is None:  # "jit", and "pmap" before replicating: the first local device
      one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: one_device, abstract_state)
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )

  def put_batch(self, batch: dict[str, np.ndarray], *, fused: bool) -> Any:
    """Moves this process's part of a batch (or stacked batches) into this layout."""
    if self.mode == "jit":
      return jax.device_put(batch)
    if self.mode == "pmap":
      return parallel.shard_for_pmap(batch, jax.local_device_count(), fused=fused)
    return parallel.global_batch(batch, parallel.batch_sharding(self.mesh, fused=fused))


def create(
  mode: str,
  mesh_shape: str,
  abstract_state: Any,
  *,
  param_axes: Mapping[str, tuple | None] | None = None,
  sharding_rules: Sequence[tuple[str, Any]] = (),
  logical_axis_rules: parallel.Rules = (),
  dcn_mesh_shape: str = "",
  max_replicated_mb: float = math.inf,
) -> Placement:
  """The placement for `mode` (one of `MODES`) over all devices.

  Args:
    mode: how the step is compiled (`MODES`).
    mesh_shape: the mesh of the mesh modes, e.g. "data=2,fsdp=2,model=2".
    abstract_state: the state's shapes (`jax.eval_shape(init)`).
    param_axes: the model's own axis names per parameter path (`dl.Linen(...).axes(batch)`).
    sharding_rules: the user's (regex on leaf paths, axis names) rules.
    logical_axis_rules: (logical name, mesh axes) pairs taking precedence over
      `dl.core.parallel.LOGICAL_RULES`.
    dcn_mesh_shape: the part of each mesh axis that spans slices or hosts (a hybrid mesh).
    max_replicated_mb: a state leaf larger than this may not be replicated on a mesh that
      could shard it (a ValueError names it before anything is compiled).
  """
  if mode not in MODES:
    raise ValueError(f"parallel mode must be one of {MODES}; got {mode!r}.")
  if mode in ("jit", "pmap") and jax.process_count() > 1:
    raise ValueError(
      f"parallel={mode!r} runs in one process; with {jax.process_count()} processes "
      "use 'data' or 'fsdp' (a mesh over the devices of all processes)."
    )
  if mode in ("jit", "pmap"):
    return Placement(mode)
  mesh = parallel.make_mesh(mode, mesh_shape, dcn_mesh_shape=dcn_mesh_shape)
  rules = (*logical_axis_rules, *parallel.LOGICAL_RULES)
  shardings = parallel.state_shardings(
    abstract_state,
    mesh,
    param_axes=param_axes,
    rules=sharding_rules,
    logical_rules=rules,
    max_replicated_bytes=max_replicated_mb * 2**20,
  )
  return Placement(mode, mesh, shardings, rules)
