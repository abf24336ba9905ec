"""How a pure step becomes a compiled call. The step itself never changes."""

import functools
import logging
from collections.abc import Callable

import jax

Step = Callable  # (state, batch) -> (state, metrics)
log = logging.getLogger(__name__)


def scan_steps(step: Step, *, unroll: bool = False) -> Step:
  """Fuses steps: `batches` carry a leading axis of k; returns metrics stacked over k.

  One dispatch then runs k steps, which matters when a step takes less time than
  launching it (small models), and saves each call's set-up (buffers, threads).

  Args:
    step: the pure step.
    unroll: write the k steps out as straight-line code instead of a loop. Compilation
      grows with k. Worth it for convolutional models on XLA's CPU backend, which runs the
      gradient of a convolution inside a loop body many times slower than outside one
      (jax-ml/jax#12868; measured in `benchmarks/train_throughput.py`); a loop is better for
      small dense models.
  """

  @functools.wraps(step)
  def steps(state, batches):
    return jax.lax.scan(step, state, batches, unroll=unroll)

  return steps


def _fuse(step: Step, fused: bool, unroll: bool) -> Step:
  return scan_steps(step, unroll=unroll) if fused else step


def jit_step(step: Step, *, fused: bool = False, unroll: bool = False) -> Step:
  """`jax.jit` with the state donated, optionally over `scan_steps(step, unroll=unroll)`."""
  return jax.jit(_fuse(step, fused, unroll), donate_argnums=0)


def pmap_step(
  step: Step, *, axis_name: str = "devices", fused: bool = False, unroll: bool = False
) -> Step:
  """`jax.pmap` over local devices: state replicated, batch split on a leading device axis.

  The step gets `axis_name` so it averages gradients with `lax.pmean`.
  """
  step = functools.partial(step, axis_name=axis_name)
  return jax.pmap(_fuse(step, fused, unroll), axis_name=axis_name, donate_argnums=0)


def mesh_step(
  step: Step, state_shardings, batch_sharding, *, fused: bool = False, unroll: bool = False
) -> Step:
  """`jax.jit` over a mesh: XLA inserts the collectives that the shardings imply.

  Args:
    step: the pure step.
    state_shardings: a pytree of `NamedSharding`s matching the state (replicated for data
      parallel, sharded for FSDP); the new state keeps them.
    batch_sharding: how the batch (or stacked batches, when `fused`) is split.
    fused: run k steps per call with `scan_steps`.
    unroll: unroll those k steps (`scan_steps`).
  """
  return jax.jit(
    _fuse(step, fused, unroll),
    in_shardings=(state_shardings, batch_sharding),
    out_shardings=(state_shardings, None),
    donate_argnums=0,
  )


def use_compilation_cache(directory: str) -> None:
  """Points JAX's persistent compilation cache at `directory`, unless the environment
  (JAX_COMPILATION_CACHE_DIR) or an earlier run of this process chose one already.

  Args:
    directory: where compiled programs are written and, by a later run, read back.
  """
  current = jax.config.jax_compilation_cache_dir
  if current and current != directory:
    log.warning(
      "compilation_cache_dir %r not used: this process caches compiled programs in %r "
      "(JAX_COMPILATION_CACHE_DIR or an earlier run), and JAX keeps the first.",
      directory,
      current,
    )
    return
  jax.config.update("jax_compilation_cache_dir", directory)
