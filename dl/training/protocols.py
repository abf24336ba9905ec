"""What `dl.fit` trains and how it is extended: `Trainable`, `Batches`, `Hook`.

A `Trainable` is any object with the required members: a name, a best-checkpoint choice, an
init, a pure step, its batches and an evaluation (a `dl.Task`, a GAN, federated rounds, a
user's own class). It may also provide the members `TrainableDefaults` declares; where it
does not, the loop uses the defaults written there (`optional` reads each one).
"""

import difflib
import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

Metrics = dict[str, Any]


class Batches(Protocol):
  """A checkpointable stream of training batches (e.g. `dl.data.batches.ShuffledBatches`)."""

  steps_per_epoch: int

  def next(self, num_batches: int | None = None) -> dict[str, np.ndarray]:
    """The next batch, or `num_batches` batches stacked on a new leading axis."""
    ...

  def get_state(self) -> Any:
    """The position in the stream, as a checkpoint stores it."""
    ...

  def set_state(self, state: Any) -> None:
    """Moves to a position `get_state` returned."""
    ...


class Trainable(Protocol):
  """What `fit` trains: a pure step over a state pytree, and the batches that feed it.

  These members are required; the optional ones, with their defaults, are those of
  `TrainableDefaults`.

  Attributes:
    name: shown on the progress bar and the plot.
    selection: (eval metric, "min" or "max") that picks the best checkpoint, or None.
  """

  name: str
  selection: tuple[str, str] | None

  def init(self, seed: int) -> Any:
    """One member's initial state (a pytree with a `step`); traced by `jax.eval_shape`."""

  def step(self, state: Any, batch: Any) -> tuple[Any, Metrics]:
    """The pure step. Takes `axis_name=` too where it supports `parallel="pmap"`."""

  def batches(self, batch_size: int, *, seed: int, shard_index: int, num_shards: int) -> Batches:
    """This process's training batches for the member seeded with `seed`."""

  def evaluate(self, state: Any, split: str, batch_size: int) -> Metrics | None:
    """Metrics of `state` on "eval" (validation) or "test"; None when there is no such data."""


class TrainableDefaults:
  """The optional members of a `Trainable`, each with what `fit` assumes when it is absent.

  A trainable may subclass this, to inherit the defaults and show what it overrides, but
  need not: `fit` reads each optional member through `optional`, which falls back to the
  default written here, so a plain class (or a frozen dataclass) with only the required
  members trains as it is. A base class that every trainable had to name would tie a
  user's class to dl for nothing; a `Protocol` alone could not hold the defaults.
  """

  def examples_per_step(self, batch_size: int) -> int:
    """The examples one step consumes, for the records' examples_per_sec (e.g. a federated
    round's clients x local steps x batch); default `batch_size`."""
    return batch_size

  def flops_per_step(self, batch_size: int) -> float | None:
    """One member's analytic model FLOPs of a step, for the records' model_flops_per_step
    and mfu; default None: XLA's count of the one-step program."""
    del batch_size
    return None

  def param_axes(self) -> Mapping[str, tuple | None]:
    """{parameter path: axis names}, the model's own sharding annotations, used on a mesh;
    default {}: none (the config's rules and the fsdp shape rule place every leaf)."""
    return {}

  def mode(self, metric: str) -> str:
    """ "min" or "max": which direction of `metric` is better, for a metric the config picks
    checkpoints by; default "min" for "loss", "max" for the rest."""
    return "min" if metric == "loss" else "max"

  def split_size(self, batch_size: int) -> int:
    """The size of the batch axis that devices split (e.g. the clients of a federated
    round); default `batch_size`."""
    return batch_size


OPTIONAL = tuple(name for name in vars(TrainableDefaults) if not name.startswith("_"))
REQUIRED = ("name", "selection", "init", "step", "batches", "evaluate")


def optional(trainable: Trainable, member: Callable) -> Callable:
  """`trainable`'s own optional `member` (a `TrainableDefaults` method), else its default.

  Args:
    trainable: any `Trainable`, a `TrainableDefaults` subclass or not.
    member: the declaration, e.g. `TrainableDefaults.mode`.

  Returns:
    The bound method to call, e.g. `optional(task, TrainableDefaults.mode)("error")`.
  """
  name = member.__name__
  if getattr(TrainableDefaults, name, None) is not member:
    raise ValueError(f"member must be one of TrainableDefaults.{OPTIONAL}; got {member!r}.")
  own = getattr(trainable, name, None)
  return own if own is not None else functools.partial(member, trainable)


def check_members(trainable: Trainable) -> None:
  """Warns of a public member whose name is close to an optional one's (e.g.
  `flop_per_step`), which `fit` would otherwise ignore without a word."""
  own = {n for n in dir(trainable) if not n.startswith("_")} - set(OPTIONAL) - set(REQUIRED)
  for name in sorted(own):
    # "mode" is left out: it is as close to "model", a name many trainables hold.
    close = difflib.get_close_matches(name, [n for n in OPTIONAL if len(n) > 4], n=1, cutoff=0.85)
    if close:
      warnings.warn(
        f"{type(trainable).__name__} has {name!r}, which dl.fit does not read; did you mean "
        f"the optional member {close[0]!r} (dl.training.protocols.TrainableDefaults)?",
        stacklevel=3,
      )


class Hook:
  """Extends the loop without entering it; override what you need.

  Most hooks add to the records (`on_log`, `on_eval`). A hook that steers training (a
  search that stops and refills trials, population-based training) returns a new state
  from `on_start` and `after_eval`, and keeps its own bookkeeping in the checkpoint through
  `get_state`/`set_state`, so a resumed run takes the same decisions.
  """

  def on_log(self, step: int, record: Metrics) -> Metrics:
    """Extra metrics for the train record of `step` (e.g. the privacy budget spent)."""
    del step, record
    return {}

  def on_eval(self, state: Any, step: int, split: str) -> Metrics:
    """Extra metrics when `state` is evaluated on `split` ("eval" or "test")."""
    del state, step, split
    return {}

  def on_start(self, state: Any, step: int) -> Any:
    """The state to train from, given the new or restored one at `step` (logical copy)."""
    del step
    return state

  def after_eval(self, state: Any, step: int, metrics: Metrics) -> Any:
    """The state to go on with after the validation `metrics` of `step` were written.

    Called before the checkpoint of `step` is saved, so the checkpoint holds what this
    returns. The new state must keep the structure, shapes and dtypes of `state`: the
    compiled step is then reused as it is.
    """
    del step, metrics
    return state

  def get_state(self) -> Any:
    """The hook's own state, JSON-serialisable, saved in each checkpoint (None: nothing)."""
    return None

  def set_state(self, state: Any) -> None:
    """Takes back what `get_state` returned, when a run resumes from a checkpoint."""
    del state

  def before_dispatch(self, step: int, num_steps: int) -> None:
    """Called before each compiled call, which runs the `num_steps` steps from `step` (more
    than one when steps are fused), and once more with `num_steps` 0 when the loop ends,
    normally or by an exception (e.g. to stop a profile: `dl.training.profile`)."""
    del step, num_steps
