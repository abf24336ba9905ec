"""Activation functions by name, as config files name them."""

from collections.abc import Callable

import jax

_NAMES = ("relu", "gelu", "silu", "tanh", "sigmoid", "elu", "leaky_relu", "swish")


def get(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the `jax.nn` activation called `name`."""
  if name not in _NAMES:
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(_NAMES)}")
  return getattr(jax.nn, name)
