"""Rematerialisation: recompute a block's activations in the backward pass instead of keeping
them, trading compute for memory (`jax.checkpoint`, lifted to Flax modules by `nn.remat`).

  h = remat(Block(...), "full")(x, mask, train=train)      # inside a compact __call__

`policy` names what is kept: "none" (no remat: everything is kept), "full" (nothing is kept
but the block's inputs), or the name of any `jax.checkpoint_policies` member, e.g.
"dots_saveable" (keep matrix products, recompute elementwise work) or
"dots_with_no_batch_dims_saveable". The wrapped block keeps its name and parameters, so a
checkpoint trained with one policy restores under another.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

# The members of `jax.checkpoint_policies` that are policies (the others build one from names).
_NAMED = (
  "dots_saveable",
  "dots_with_no_batch_dims_saveable",
  "checkpoint_dots",
  "checkpoint_dots_with_no_batch_dims",
  "everything_saveable",
  "nothing_saveable",
)
POLICIES = ("none", "full", *_NAMED)


def check_policy(policy: str) -> str:
  """`policy`, if it is one of `POLICIES`; else a ValueError listing them."""
  if policy not in POLICIES:
    raise ValueError(
      f"remat policy must be one of {', '.join(map(repr, POLICIES))}; got {policy!r}."
    )
  return policy


def remat(module: nn.Module, policy: str = "full") -> Callable[..., Any]:
  """`module` called with its activations recomputed in the backward pass.

  Args:
    module: an (unbound) Flax Linen module instance, created in a parent's compact
      `__call__` (or `setup`); it keeps its name, so parameters do not move.
    policy: "none" (returns `module` itself), "full", or a `jax.checkpoint_policies` name.

  Returns:
    A function called like `module`: positional arguments and array keyword arguments are
    traced; other keyword arguments (`train=True`, flags) stay static Python values.
  """
  if check_policy(policy) == "none":
    return module
  # "full": no policy, i.e. nothing saved but the inputs.
  checkpoint = None if policy == "full" else getattr(jax.checkpoint_policies, policy)

  def call(*args, **kwargs):
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, jax.Array)}
    static = {k: v for k, v in kwargs.items() if k not in arrays}
    num_args = len(args)

    def run(block, *flat):
      return block(*flat[:num_args], **dict(zip(arrays, flat[num_args:])), **static)

    return nn.remat(run, policy=checkpoint, prevent_cse=True)(module, *args, *arrays.values())

  return call
