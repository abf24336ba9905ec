"""How the training loop lays out state and batches for each compile mode.

  "jit"   one device: `jax.jit`, state donated.
  "pmap"  local devices: state replicated, batch split on a leading device axis, `lax.pmean`.
  "data"  a mesh, data parallel: params replicated, batch split (`jax.jit` + shardings).
  "fsdp"  a mesh, fully sharded: params and optimizer state split too.

Each mode compiles the same pure step; only the layout differs. `MODES` lists them.
"""

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from dl import parallel
from dl.training import compile as compile_lib

MODES = ("jit", "pmap", "data", "fsdp")


@dataclasses.dataclass(frozen=True)
class Placement:
  """Compiles the step for one mode and moves state and batches to where it expects them.

  Attributes:
    mode: one of `MODES`.
    mesh: the device mesh ("data" and "fsdp" modes), else None.
    state_shardings: a pytree of shardings matching the state ("data", "fsdp"), else None.
  """

  mode: str
  mesh: Mesh | None = None
  state_shardings: Any = None

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
    return compile_lib.mesh_step(step, self.state_shardings, batch, fused=fused, unroll=unroll)

  def init(self, init_fn: Callable[[], Any]) -> Any:
    """Runs `init_fn` straight into this layout (sharded modes never hold a full copy)."""
    if self.state_shardings is not None:
      return jax.jit(init_fn, out_shardings=self.state_shardings)()
    return self.put_state(init_fn())

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


def create(mode: str, mesh_shape: str, abstract_state: Any) -> Placement:
  """The placement for `mode` ("jit", "pmap", "data", "fsdp") over all devices."""
  if mode not in MODES:
    raise ValueError(f"parallel mode must be one of {MODES}; got {mode!r}.")
  if mode in ("jit", "pmap") and jax.process_count() > 1:
    raise ValueError(
      f"parallel={mode!r} runs in one process; with {jax.process_count()} processes "
      "use 'data' or 'fsdp' (a mesh over the devices of all processes)."
    )
  if mode in ("jit", "pmap"):
    return Placement(mode)
  mesh = parallel.make_mesh(mode, mesh_shape)
  return Placement(mode, mesh, parallel.state_shardings(abstract_state, mesh))
