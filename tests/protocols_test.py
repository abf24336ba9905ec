"""What a trainable must and may provide: a plain class with only the required members trains
through `dl.fit`; the optional members fall back to `TrainableDefaults`; a misspelled one
is not ignored without a word."""

import warnings

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dl
from dl.data.batches import ShuffledBatches
from dl.training.protocols import TrainableDefaults, check_members, optional


@flax.struct.dataclass
class LineState:
  step: jax.Array
  w: jax.Array


class Line:
  """A user's own trainable: least squares of y = 3 x, with the required members alone."""

  name = "line"
  selection = ("loss", "min")

  def __init__(self):
    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
    self.arrays = {"x": x, "y": 3.0 * x}

  def init(self, seed: int) -> LineState:
    del seed
    return LineState(step=jnp.zeros((), jnp.int32), w=jnp.zeros((), jnp.float32))

  def step(self, state: LineState, batch):
    loss, grad = jax.value_and_grad(lambda w: jnp.mean((w * batch["x"] - batch["y"]) ** 2))(state.w)
    return LineState(step=state.step + 1, w=state.w - 0.5 * grad), {"loss": loss}

  def batches(self, batch_size: int, *, seed: int, shard_index: int, num_shards: int):
    return ShuffledBatches(
      self.arrays, batch_size, seed, shard_index=shard_index, num_shards=num_shards
    )

  def evaluate(self, state: LineState, split: str, batch_size: int):
    del batch_size
    if split != "eval":
      return None
    return {"loss": float(np.mean((float(state.w) * self.arrays["x"] - self.arrays["y"]) ** 2))}


def test_a_plain_class_with_the_required_members_trains(tmp_path):
  config = dl.FitConfig(num_steps=20, batch_size=16, log_every=10, progress=False)
  state, history = dl.fit(Line(), str(tmp_path), config, tensorboard=False)
  assert int(state.step) == 20
  assert abs(float(state.w) - 3.0) < 0.1
  record = history["train"][0]
  assert record["examples_per_sec"] > 0  # from the default examples_per_step: batch_size
  assert history["eval"][-1]["loss"] < 0.01 and history["test"] == []


def test_optional_members_fall_back_to_their_declared_defaults():
  line = Line()
  assert optional(line, TrainableDefaults.mode)("loss") == "min"
  assert optional(line, TrainableDefaults.mode)("accuracy") == "max"
  assert optional(line, TrainableDefaults.split_size)(32) == 32
  assert optional(line, TrainableDefaults.examples_per_step)(32) == 32
  assert optional(line, TrainableDefaults.flops_per_step)(32) is None
  assert optional(line, TrainableDefaults.param_axes)() == {}
  line.split_size = lambda batch_size: 4  # the trainable's own member wins
  assert optional(line, TrainableDefaults.split_size)(32) == 4
  with pytest.raises(ValueError, match="TrainableDefaults"):
    optional(line, Line.evaluate)


def test_a_misspelled_optional_member_warns(tmp_path):
  class Counted(Line):
    def flop_per_step(self, batch_size: int) -> float:
      return 6.0 * batch_size

  with pytest.warns(UserWarning, match="'flop_per_step'.*did you mean .*'flops_per_step'"):
    dl.fit(Counted(), str(tmp_path), num_steps=2, batch_size=16, progress=False, tensorboard=False)
  with pytest.warns(UserWarning, match="'example_per_step'"):
    line = Line()
    line.example_per_step = lambda batch_size: batch_size
    check_members(line)


def test_a_model_member_is_not_taken_for_a_misspelled_mode():
  line = Line()
  line.model = object()  # what a Task holds, as close to `mode` as a typo
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    check_members(line)
