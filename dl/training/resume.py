"""Where a run starts: the newest readable checkpoint, else a new state.

A checkpoint keeps, beside the state, the run's `Position`: where the training stream is,
and the state of each hook that keeps one. `start` restores both, or initialises the state.
"""

from collections.abc import Sequence
from typing import Any

import jax

from dl.core.checkpoint import Checkpointer
from dl.training import placement
from dl.training.protocols import Batches, Hook


class Position:
  """What a checkpoint keeps beside the state: the data position and the hooks' own state."""

  def __init__(self, batches: Batches, hooks: Sequence[Hook]):
    self.batches = batches
    self.hooks = [hook for hook in hooks if hook.get_state() is not None]

  def get_state(self) -> Any:
    """The position to save, JSON-serialisable (the stream's alone when no hook keeps state)."""
    if not self.hooks:
      return self.batches.get_state()
    return {"batches": self.batches.get_state(), "hooks": [h.get_state() for h in self.hooks]}

  def set_state(self, saved: Any) -> None:
    """Moves the stream and the hooks back to what `get_state` returned."""
    if not self.hooks:
      self.batches.set_state(saved)
      return
    if not (isinstance(saved, dict) and len(saved.get("hooks", ())) == len(self.hooks)):
      raise ValueError(
        f"the checkpoint holds no state for this run's {len(self.hooks)} stateful hooks "
        f"({', '.join(type(h).__name__ for h in self.hooks)}); it was written by another kind "
        "of run. Resume it with the hooks it was trained with, or train in a new workdir."
      )
    self.batches.set_state(saved["batches"])
    for hook, hook_state in zip(self.hooks, saved["hooks"]):
      hook.set_state(hook_state)


def start(
  layout: placement.Placement, ckpt: Checkpointer, init, abstract_state, position: Position
) -> Any:
  """The state laid out for training: restored from `ckpt` if it has one, else new.

  A restored state takes its injected hyperparameters (`optax.inject_hyperparams`: learning
  rate, weight decay, swept values) from this run, not from the checkpoint, so a run resumed
  with a changed learning rate trains with the new one.
  """
  restored = ckpt.restore(layout.restore_target(abstract_state))
  if restored is None:
    return layout.init(init)
  _, state, saved_position = restored
  position.set_state(saved_position)
  return layout.put_state(_replace_hyperparams(state, init))


def _is_hyperparam(path) -> bool:
  return any(getattr(key, "name", None) == "hyperparams" for key in path)


def _replace_hyperparams(state: Any, init) -> Any:
  """`state` with every injected hyperparameter as a fresh `init()` sets it."""
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  if not any(map(_is_hyperparam, paths)):
    return state
  # Compiled on its own, XLA keeps the constants and drops the rest of the initialisation.
  values = jax.jit(
    lambda: [x for p, x in jax.tree_util.tree_leaves_with_path(init()) if _is_hyperparam(p)]
  )()
  fresh = iter(jax.device_get(values))  # host values, laid out with the rest by `put_state`
  return jax.tree_util.tree_map_with_path(
    lambda path, x: next(fresh) if _is_hyperparam(path) else x, state
  )
