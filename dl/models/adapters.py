"""A model as two pure functions of a batch: `init` and `apply`, whatever made it.

dl's steps see every model through this contract (`Model`):

  params, model_state = model.init(rng, batch)
  outputs, model_state = model.apply(params, model_state, batch, train=True, rng=rng)

`params` and `model_state` (batch statistics and other non-trainable variables) are plain
pytrees that orbax saves, a mesh shards and `jax.vmap` stacks. `model.inputs` names the batch
keys the model reads; everything else in a batch (labels, extra targets) is the objective's.

A model's own sharding annotations (Linen `nn.with_partitioning` /
`nn.with_logical_partitioning`, NNX `nnx.with_partitioning`) are not kept in `params`: they
are read by `model.axes(batch)`, {parameter path: axis names per dimension}, which
`dl.core.parallel` resolves to mesh axes.

- `Linen(module, inputs=("user", "item"))` calls `module(batch["user"], batch["item"],
  train=...)` through `module.apply`.
- `NNX(lambda rngs: MyModel(..., rngs=rngs))` builds a Flax NNX module from `nnx.Rngs`,
  keeps its parameters as a pure dict (`nnx.split`) and rebuilds it inside each step
  (`nnx.merge`), so the step stays a pure function of the state.
"""

import dataclasses
import functools
import inspect
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dl.core.parallel import path_name

Batch = Mapping[str, jax.Array]


class Model(Protocol):
  """What dl's steps need of a model (see the module docstring)."""

  inputs: tuple[str, ...]

  def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, Any]: ...

  def axes(self, batch: Batch) -> dict[str, tuple | None]: ...

  def apply(
    self, params: Any, model_state: Any, batch: Batch, *, train: bool, rng: jax.Array | None = None
  ) -> tuple[Any, Any]: ...


def _keys(inputs: str | Sequence[str]) -> tuple[str, ...]:
  keys = (inputs,) if isinstance(inputs, str) else tuple(inputs)
  if not keys or not all(isinstance(k, str) for k in keys):
    raise ValueError(f"inputs must name one or more batch keys, e.g. ('input',); got {inputs!r}.")
  return keys


def _takes(fn: Callable, name: str) -> bool:
  """Whether `fn` accepts the keyword `name` (or any keyword)."""
  parameters = inspect.signature(fn).parameters.values()
  return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def _args(batch: Batch, keys: tuple[str, ...]) -> list[jax.Array]:
  missing = [k for k in keys if k not in batch]
  if missing:
    raise ValueError(
      f"the model reads batch keys {list(keys)}; the batch has {sorted(batch)} (missing "
      f"{missing}). Say which keys feed the model with inputs=(...)."
    )
  return [batch[k] for k in keys]


@dataclasses.dataclass(frozen=True)
class Linen:
  """A Flax Linen module as a `Model`.

  Attributes:
    module: the module; called as `module(*[batch[k] for k in inputs], **{train_arg: train})`.
    inputs: the batch keys passed positionally, in order.
    train_arg: the keyword that switches training behaviour (dropout, batch statistics);
      None when the module takes none (found out when its `__call__` has no such keyword).
    rng_streams: the module's random streams (`self.make_rng(name)`); the step's key feeds
      the first, keys folded from it the others.
    ids: {input key: size} for integer inputs that index an embedding of `size` rows, checked
      at the door (`dl.task`): an id past the table fails there rather than as a NaN loss
      (`jnp.take` fills rows out of range with NaN). An `nn.Embed` that reads an input as it
      comes is found without it.
  """

  module: nn.Module
  inputs: tuple[str, ...] = ("input",)
  train_arg: str | None = "train"
  rng_streams: tuple[str, ...] = ("dropout",)
  ids: Mapping[str, int] = dataclasses.field(default_factory=dict, compare=False)

  def __post_init__(self):
    if not isinstance(self.module, nn.Module):
      raise TypeError(f"Linen wraps a flax.linen.Module; got {type(self.module).__name__}.")
    object.__setattr__(self, "inputs", _keys(self.inputs))
    if self.train_arg and not _takes(self.module.__call__, self.train_arg):
      object.__setattr__(self, "train_arg", None)  # e.g. nn.Dense: no training behaviour

  def _kwargs(self, train: bool) -> dict[str, bool]:
    return {self.train_arg: train} if self.train_arg else {}

  def _rngs(self, rng: jax.Array) -> dict[str, jax.Array]:
    return {
      name: rng if i == 0 else jax.random.fold_in(rng, i) for i, name in enumerate(self.rng_streams)
    }

  def _variables(self, rng: jax.Array, batch: Batch):
    """The module's variables, annotated ones still boxed (`nn.Partitioned`)."""
    return self.module.init(
      {"params": rng, **self._rngs(rng)}, *_args(batch, self.inputs), **self._kwargs(False)
    )

  def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, dict[str, Any]]:
    """(params, other variable collections) for inputs shaped like `batch`'s."""
    model_state, params = flax.core.pop(nn.meta.unbox(self._variables(rng, batch)), "params")
    return params, dict(model_state)

  def axes(self, batch: Batch) -> dict[str, tuple | None]:
    """{parameter path: the axis names it was annotated with, or None}, from shapes alone."""
    variables = jax.eval_shape(self._variables, jax.random.PRNGKey(0), batch)
    return _axes(variables["params"], lambda box: box.names, nn.meta.AxisMetadata)

  def apply(self, params, model_state, batch, *, train, rng=None):
    """(outputs, model_state): collections are updated (batch statistics) only in training."""
    mutable = list(model_state) if train else False
    out = self.module.apply(
      {"params": params, **model_state},
      *_args(batch, self.inputs),
      **self._kwargs(train),
      rngs=None if rng is None else self._rngs(rng),
      mutable=mutable or False,
    )
    if not mutable:
      return out, model_state
    outputs, new_state = out
    return outputs, dict(new_state)


@dataclasses.dataclass(frozen=True, eq=False)
class NNX:
  """A Flax NNX module as a `Model`: built from `nnx.Rngs`, its state kept as pure dicts.

  Attributes:
    make: `rngs -> module`, e.g. `lambda rngs: MyModel(din, dout, rngs=rngs)`; each ensemble
      member builds its own from its seed.
    inputs: the batch keys passed positionally to the module's `__call__`, in order.
    ids: {input key: size} for integer inputs that index an embedding of `size` rows,
      checked at the door (`dl.task`), as for `Linen`.

  `params` holds the `nnx.Param` variables, `model_state` every other variable except random
  streams (e.g. `nnx.BatchStat`). Random streams are reseeded from the step's key inside each
  step, so dropout depends on (seed, step) alone, as with Linen models.
  """

  make: Callable[[Any], Any]
  inputs: tuple[str, ...] = ("input",)
  ids: Mapping[str, int] = dataclasses.field(default_factory=dict, compare=False)

  def __post_init__(self):
    from flax import nnx

    if isinstance(self.make, nnx.Module) or not callable(self.make):
      raise TypeError(
        "NNX takes a function that builds the module from nnx.Rngs, e.g. "
        f"dl.NNX(lambda rngs: MyModel(..., rngs=rngs)); got {type(self.make).__name__}."
      )
    object.__setattr__(self, "inputs", _keys(self.inputs))

  @functools.cached_property
  def _structure(self):
    """(graphdef, abstract params, abstract random streams, abstract other state)."""
    from flax import nnx

    with nnx.use_eager_sharding(False):  # laid out by dl's placement, not at creation
      abstract = nnx.eval_shape(lambda: self.make(nnx.Rngs(0)))
    return nnx.split(abstract, nnx.Param, nnx.RngState, ...)

  def init(self, rng, batch):
    """(params, model_state) as pure dicts; `batch` is unused (NNX modules know their shapes)."""
    from flax import nnx

    del batch
    with nnx.use_eager_sharding(False):
      module = self.make(nnx.Rngs(rng))
    _, params, _, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  def axes(self, batch) -> dict[str, tuple | None]:
    """{parameter path: its `out_sharding` (or `sharding`) metadata, or None}."""
    from flax import nnx

    del batch

    def names(variable):
      metadata = variable.get_metadata()
      return metadata.get("out_sharding", metadata.get("sharding"))

    return _axes(self._structure[1], names, nnx.Variable)

  def module(self, params, model_state, rng: jax.Array | None = None):
    """The live NNX module holding `params` and `model_state` (streams seeded from `rng`)."""
    from flax import nnx

    graphdef, abstract_params, abstract_rngs, abstract_rest = self._structure
    states = []
    for abstract, pure in ((abstract_params, params), (abstract_rest, model_state)):
      state = jax.tree.map(lambda x: x, abstract)  # a fresh copy to fill in
      nnx.replace_by_pure_dict(state, pure)
      states.append(state)
    key = jax.random.key(0) if rng is None else _typed(rng)
    rngs = jax.tree_util.tree_map_with_path(
      lambda path, v: _stream_variable(v, key, path),
      abstract_rngs,
      is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    module = nnx.merge(graphdef, states[0], rngs, states[1])
    return module

  def apply(self, params, model_state, batch, *, train, rng=None):
    """(outputs, model_state): the module's `__call__` in train or eval mode."""
    from flax import nnx

    module = self.module(params, model_state, rng)
    module.train() if train else module.eval()
    outputs = module(*_args(batch, self.inputs))
    _, _, _, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)
    return outputs, nnx.to_pure_dict(rest)


def _axes(tree, names: Callable[[Any], tuple | None], box: type) -> dict[str, tuple | None]:
  """{path: names(leaf) for boxed leaves, None for plain ones} over a parameter tree."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, box))[0]
  return {
    path_name(path): (tuple(names(leaf)) if isinstance(leaf, box) and names(leaf) else None)
    for path, leaf in leaves
  }


def _typed(rng: jax.Array) -> jax.Array:
  """A typed key (`jax.random.key`) from either kind of key."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng
  return jax.random.wrap_key_data(rng)


def _stream_variable(variable, key: jax.Array, path) -> Any:
  """A concrete random-stream variable for an abstract one: each stream's key is folded from
  `key` by where the stream sits in the module (two Dropout layers draw different masks);
  counts start at 0."""
  from flax import nnx

  if isinstance(variable, nnx.RngKey):
    where = jax.tree_util.keystr(path)
    return variable.replace(jax.random.fold_in(key, zlib.crc32(where.encode())))
  value = variable.get_value()
  return variable.replace(jnp.zeros(value.shape, value.dtype))


def as_model(model) -> Model:
  """`model` as a `Model`: a Linen module is wrapped in `Linen`; adapters pass through."""
  if isinstance(model, nn.Module):
    return Linen(model)
  if hasattr(model, "init") and hasattr(model, "apply") and hasattr(model, "inputs"):
    return model
  raise TypeError(
    "expected a flax.linen.Module, dl.Linen(module, inputs=...) or dl.NNX(make, inputs=...); "
    f"got {type(model).__name__}. For an NNX module pass a function that builds it: "
    "dl.NNX(lambda rngs: MyModel(..., rngs=rngs))."
  )
