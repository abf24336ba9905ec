"""How a pure step becomes a compiled call. The step itself never changes."""

import functools
from collections.abc import Callable

import jax

Step = Callable  # (state, batch) -> (state, metrics)


def scan_steps(step: Step) -> Step:
  """Fuses steps: `batches` carry a leading axis of k; returns metrics stacked over k.

  One dispatch then runs k steps, which matters when a step takes less time than
  launching it (small models).
  """

  @functools.wraps(step)
  def steps(state, batches):
    return jax.lax.scan(step, state, batches)

  return steps


def jit_step(step: Step, *, fused: bool = False) -> Step:
  """`jax.jit` with the state donated, optionally over `scan_steps(step)`."""
  return jax.jit(scan_steps(step) if fused else step, donate_argnums=0)


def pmap_step(step: Step, *, axis_name: str = "devices", fused: bool = False) -> Step:
  """`jax.pmap` over local devices: state replicated, batch split on a leading device axis.

  The step gets `axis_name` so it averages gradients with `lax.pmean`.
  """
  step = functools.partial(step, axis_name=axis_name)
  return jax.pmap(scan_steps(step) if fused else step, axis_name=axis_name, donate_argnums=0)


def mesh_step(step: Step, state_shardings, batch_sharding, *, fused: bool = False) -> Step:
  """`jax.jit` over a mesh: XLA inserts the collectives that the shardings imply.

  Args:
    step: the pure step.
    state_shardings: a pytree of `NamedSharding`s matching the state (replicated for data
      parallel, sharded for FSDP); the new state keeps them.
    batch_sharding: how the batch (or stacked batches, when `fused`) is split.
    fused: run k steps per call with `scan_steps`.
  """
  return jax.jit(
    scan_steps(step) if fused else step,
    in_shardings=(state_shardings, batch_sharding),
    out_shardings=(state_shardings, None),
    donate_argnums=0,
  )
