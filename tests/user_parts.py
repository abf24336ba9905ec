"""Parts a researcher brings, for the tests of `dl.fit`: a two-input Linen model with its own
objective and schedule, and an NNX model, on arrays made from real digits.

Also a script, so a test can signal or kill it mid-run:
  python tests/user_parts.py KIND WORKDIR STEPS [key=value ...]
(`DL_TEST_SLOW_SECONDS` makes it sleep at every log step.)
"""

import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dl


def halves() -> dict[str, dict[str, np.ndarray]]:
  """Digits as two inputs, the left and right halves of each image (float32 in [0, 1])."""
  splits = {}
  for split in ("train", "test"):
    arrays = dl.data.load("digits", split)
    x = arrays["image"].astype(np.float32) / 16.0
    splits[split] = {
      "left": x[:, :, :4, 0].reshape(len(x), -1),
      "right": x[:, :, 4:, 0].reshape(len(x), -1),
      "label": arrays["label"].astype(np.int32),
    }
  return splits


class TwoTower(nn.Module):
  """One small tower per half; their features are concatenated and classified."""

  width: int = 32

  @nn.compact
  def __call__(self, left, right, train: bool = False):
    towers = [nn.relu(nn.Dense(self.width)(x)) for x in (left, right)]
    h = nn.Dropout(0.1, deterministic=not train)(jnp.concatenate(towers, axis=-1))
    return nn.Dense(10)(h)


def error_objective(logits_BxC, batch):
  """Cross-entropy; the metric is the error rate, which is better when lower."""
  loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["label"])
  error_B = (jnp.argmax(logits_BxC, -1) != batch["label"]).astype(jnp.float32)
  return loss_B, {"error": error_B}


def two_input_task() -> dl.Task:
  data = halves()
  schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-2, 10, 400)
  return dl.task(
    model=dl.Linen(TwoTower(), inputs=("left", "right")),
    objective=dl.core.objectives.Objective(
      error_objective, metrics=("error",), lower_is_better=frozenset({"error"}), select="error"
    ),
    optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule)),
    train=data["train"],
    test=data["test"],
  )


class NNXMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 32, rngs=rngs)
    self.norm = nnx.BatchNorm(32, rngs=rngs)
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(self.dropout(nnx.relu(self.norm(self.hidden(x.reshape(len(x), -1))))))


def nnx_task() -> dl.Task:
  return dl.task(
    model=dl.NNX(NNXMLP),
    objective=dl.core.objectives.classification,
    optimizer=optax.adam(1e-2),
    train=("digits", "train"),
    test=("digits", "test"),
  )


def _named(init, names):
  return nn.with_logical_partitioning(init, names)


class TensorParallelMLP(nn.Module):
  """Two Dense layers annotated Megatron-style: the hidden units over "model", the input and
  output widths over "fsdp"; the hidden activations constrained likewise."""

  hidden: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape(len(x), -1)
    kernel = nn.initializers.lecun_normal()
    h = nn.Dense(
      self.hidden,
      kernel_init=_named(kernel, ("embed", "mlp")),
      bias_init=_named(nn.initializers.zeros, ("mlp",)),
    )(x)
    h = nn.with_logical_constraint(nn.relu(h), ("act_batch", "act_mlp"))
    return nn.Dense(10, kernel_init=_named(kernel, ("mlp", "embed")))(h)


def tensor_parallel_task() -> dl.Task:
  return dl.task(
    model=TensorParallelMLP(),
    objective=dl.core.objectives.classification,
    optimizer=optax.adamw(1e-2, weight_decay=1e-4),
    train=("digits", "train"),
    test=("digits", "test"),
  )


class ShardedNNX(nnx.Module):
  """An NNX MLP whose kernels carry `sharding` metadata (`nnx.with_partitioning`)."""

  def __init__(self, rngs: nnx.Rngs):
    kernel = nnx.initializers.lecun_normal()
    self.hidden = nnx.Linear(
      64, 64, kernel_init=nnx.with_partitioning(kernel, ("embed", "mlp")), rngs=rngs
    )
    self.out = nnx.Linear(
      64, 16, kernel_init=nnx.with_partitioning(kernel, ("mlp", "embed")), rngs=rngs
    )

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x.reshape(len(x), -1))))[:, :10]


def sharded_nnx_task() -> dl.Task:
  return dl.task(
    model=dl.NNX(ShardedNNX),
    objective=dl.core.objectives.classification,
    optimizer=optax.adam(1e-2),
    train=("digits", "train"),
    test=("digits", "test"),
  )


TASKS = {
  "two_input": two_input_task,
  "nnx": nnx_task,
  "tensor_parallel": tensor_parallel_task,
  "sharded_nnx": sharded_nnx_task,
}


class Slow(dl.Hook):
  """Sleeps at every log step, so a test can signal a run before it ends on any machine."""

  def __init__(self, seconds: float):
    self.seconds = seconds

  def on_log(self, step, record):
    del step, record
    time.sleep(self.seconds)
    return {}


def fit(kind: str, workdir: str, num_steps: int, **overrides):
  slow = float(os.environ.get("DL_TEST_SLOW_SECONDS", "0"))
  with dl.core.distributed.primary_first("user_parts: data prepared"):  # one process writes it
    task = TASKS[kind]()
  return dl.fit(
    task,
    workdir,
    num_steps=num_steps,
    batch_size=32,
    log_every=10,
    eval_every=overrides.pop("eval_every", 25),
    progress=False,
    tensorboard=False,
    hooks=overrides.pop("hooks", [Slow(slow)] if slow else []),
    **overrides,
  )


def _value(text: str):
  return int(text) if text.lstrip("-").isdigit() else text


if __name__ == "__main__":
  # python tests/user_parts.py KIND WORKDIR STEPS [key=value ...]: FitConfig overrides.
  dl.core.distributed.initialize_from_env()
  jax.config.update("jax_numpy_rank_promotion", "raise")
  overrides = dict(arg.split("=", 1) for arg in sys.argv[4:])
  fit(sys.argv[1], sys.argv[2], int(sys.argv[3]), **{k: _value(v) for k, v in overrides.items()})
