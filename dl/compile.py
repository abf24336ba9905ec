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
