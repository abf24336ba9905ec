"""Bad data and bad parts stop at the door (`dl.task`, or the first batch of a stream) with one
clear error naming the key and the fix, before any step, leaving an existing run untouched."""

import dataclasses
import hashlib
import os

import numpy as np
import optax
import pytest
from flax import linen as nn
from sklearn.datasets import load_digits

import dl
from dl.data import checks, streaming

FIT = dict(batch_size=32, progress=False, tensorboard=False, log_every=5)


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(16)(x)))


class Bag(nn.Module):  # token ids -> embeddings -> mean -> 10 classes
  @nn.compact
  def __call__(self, ids):
    return nn.Dense(10)(nn.Embed(20, 8)(ids).mean(axis=1))


def _digits(n=640):
  digits = load_digits()
  return {
    "input": (digits.data[:n] / 16).astype(np.float32),
    "label": digits.target[:n].astype(np.int32),
  }


def _task(train, model=None, objective=dl.core.objectives.classification, **kwargs):
  return dl.task(
    model=model or MLP(), objective=objective, optimizer=optax.adam(1e-2), train=train, **kwargs
  )


def _snapshot(workdir):
  """{path: sha256} of every file under the workdir's checkpoints."""
  root = os.path.join(workdir, "checkpoints")
  files = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return files


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
  """A finished run whose checkpoints every bad input must leave as they are."""
  workdir = str(tmp_path_factory.mktemp("existing"))
  dl.fit(_task(_digits()), workdir, num_steps=10, checkpoint_every=5, **FIT)
  return workdir, _snapshot(workdir)


def _scalar_loss(outputs, batch):
  loss = optax.softmax_cross_entropy_with_integer_labels(outputs, batch["label"]).mean()
  return loss, {}


def _scalar_metric(outputs, batch):
  loss_B = optax.softmax_cross_entropy_with_integer_labels(outputs, batch["label"])
  return loss_B, {"accuracy": (outputs.argmax(-1) == batch["label"]).mean()}


def _with(key, values, n=640):
  return _digits(n) | {key: values}


def _nan_input():
  x = _digits()["input"].copy()
  x[37, 5] = np.nan
  x[90, 1] = np.inf
  return _with("input", x)


def _label(value, row=12):
  y = _digits()["label"].copy()
  y[row] = value
  return _with("label", y)


CASES = {
  # name: (task keyword arguments, error type, what the message must say)
  "scalar loss": (
    dict(objective=_scalar_loss),
    ValueError,
    r"objective '_scalar_loss' must return one value per example.*'loss': \(\)",
  ),
  "scalar metric": (
    dict(objective=_scalar_metric),
    ValueError,
    r"one value per example.*'accuracy': \(\)",
  ),
  "label 12 of 10 outputs": (
    dict(train=_label(12)),
    ValueError,
    r"training data\['label'\] holds class ids from 0 to 12.*12 at row 12.*10 outputs.*"
    r"num_classes=13",
  ),
  "negative label": (dict(train=_label(-1, row=3)), ValueError, r"-1 at row 3"),
  "NaN and inf input": (
    dict(train=_nan_input()),
    ValueError,
    r"training data\['input'\] holds 2 non-finite value\(s\).*in 2 example\(s\), the first "
    r"at row 37.*impute",
  ),
  "string column": (
    dict(train=_with("name", np.array(["x"] * 640))),
    TypeError,
    r"training data\['name'\] holds values of dtype <U1 \(strings\).*dl.data.text",
  ),
  "string input": (
    dict(train=_with("input", _digits()["input"].astype(str))),
    TypeError,
    r"training data\['input'\] holds values of dtype <U32",
  ),
  "object input": (
    dict(train=_with("input", _digits()["input"].astype(object))),
    TypeError,
    r"\['input'\] holds values of dtype object \(Python objects\)",
  ),
  "embedding id past the table": (
    dict(
      model=Bag(),
      train=_with("input", np.random.default_rng(0).integers(0, 25, (640, 6)).astype(np.int32)),
    ),
    ValueError,
    r"training data\['input'\] holds ids from 0 to 24.*embedding holds 20 ids.*vocab_size=25",
  ),
  "declared ids": (
    dict(
      model=dl.Linen(MLP(), ids={"input": 4}),  # a model that says its ids (here: wrongly)
      train=_with("input", np.tile(np.arange(8, dtype=np.int32) % 8, (640, 8))),
    ),
    ValueError,
    r"holds ids from 0 to 7.*embedding holds 4 ids",
  ),
  "mismatched lengths": (
    dict(train=_digits() | {"label": _digits()["label"][:600]}),
    ValueError,
    r"same leading \(example\) axis; got lengths \{'input': 640, 'label': 600\}",
  ),
  "empty split": (
    dict(train={k: v[:0] for k, v in _digits().items()}),
    ValueError,
    r"training data has no examples",
  ),
  "input without a feature axis": (
    dict(train=_with("input", _digits()["input"][:, 0])),
    ValueError,
    r"every output needs a leading example axis.*reshape it to \(N, 1\)",
  ),
  "label of the wrong rank": (
    dict(train=_with("label", _digits()["label"][:, None])),
    ValueError,
    r"needs batch\['label'\] of shape \(B,\)",
  ),
  "bad test split": (
    dict(test=_label(10, row=7)),
    ValueError,
    r"test data\['label'\] holds class ids from 0 to 10.*10 at row 7",
  ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_stops_at_the_door_and_leaves_the_run_untouched(case, existing_run):
  kwargs, error, message = CASES[case]
  workdir, before = existing_run
  kwargs = {"train": _digits()} | kwargs
  with pytest.raises(error, match=message):
    dl.fit(_task(**kwargs), workdir, num_steps=20, **FIT)
  assert _snapshot(workdir) == before


def test_fuzzed_bad_inputs_each_stop_with_one_clear_error(existing_run):
  """A seeded generator corrupts one random place of a random kind; every draw is stopped by
  dl (a ValueError or TypeError naming the key), never by JAX, never after a step."""
  workdir, before = existing_run
  rng = np.random.default_rng(26)
  kinds = ["nan", "inf", "-inf", "label_high", "label_low", "strings", "objects", "length"]
  for draw in range(24):
    kind = kinds[draw % len(kinds)]
    data = _digits()
    row = int(rng.integers(0, 640))
    if kind in ("nan", "inf", "-inf"):
      data["input"][row, rng.integers(0, 64)] = float(kind)
      key = "input"
    elif kind.startswith("label"):
      data["label"][row] = rng.integers(10, 1000) if kind == "label_high" else -rng.integers(1, 9)
      key = "label"
    elif kind in ("strings", "objects"):
      key = str(rng.choice(["input", "label"]))
      data[key] = data[key].astype(str if kind == "strings" else object)
    else:
      key = str(rng.choice(["input", "label"]))
      data[key] = data[key][: int(rng.integers(1, 640))]
    with pytest.raises((ValueError, TypeError), match=f"'{key}'") as raised:
      dl.fit(_task(data), workdir, num_steps=20, **FIT)
    assert type(raised.value).__module__ == "builtins", (kind, raised.value)
  assert _snapshot(workdir) == before


class _Records:
  """A random-access source of records (as `tfds.data_source` gives), one of them bad."""

  def __init__(self, data, bad_row, key, value):
    self.data, self.bad = data, (bad_row, key, value)

  def __len__(self):
    return len(self.data["label"])

  def __getitem__(self, i):
    record = {k: v[i].copy() for k, v in self.data.items()}
    if i == self.bad[0]:
      record[self.bad[1]] = np.asarray(self.bad[2], record[self.bad[1]].dtype)
    return record


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("label", 11, r"training data \(batch 0\)\['label'\] holds class ids .* 11"),
    ("input", np.full(64, np.nan, np.float32), r"\['input'\] holds 64 non-finite"),
  ],
)
def test_a_stream_checks_each_batch_as_it_is_read(key, value, message, tmp_path):
  """A stream is never read whole: its bad record stops the run when its batch is read, here
  the first one, before any step."""
  order = np.random.default_rng([0, 0]).permutation(640)  # the first batch of seed 0
  source = _Records(_digits(), int(order[3]), key, value)
  task = _task(streaming.Streaming(source), eval=_digits(64))
  with pytest.raises(ValueError, match=message):
    dl.fit(task, str(tmp_path), num_steps=20, **FIT)
  assert _snapshot(str(tmp_path)) == {}


def test_a_nan_from_training_says_the_inputs_were_finite(tmp_path):
  task = dl.task(
    model=MLP(),
    objective=dl.core.objectives.classification,
    optimizer=optax.sgd(1e12),
    train=_digits(),
  )
  with pytest.raises(FloatingPointError, match="inputs of that step's batch were finite"):
    dl.fit(task, str(tmp_path), num_steps=20, **FIT)


def test_a_nan_from_the_data_blames_the_data(tmp_path):
  """Data that bypasses the door (a trainable of one's own) is blamed when it brings the NaN."""
  data = _nan_input()
  task = _task(_digits())
  bypass = dataclasses.replace(task, train=dl.data.sources.InMemory(data))  # unchecked
  with pytest.raises(FloatingPointError, match=r"held non-finite inputs \(\d in 'input'\)"):
    dl.fit(bypass, str(tmp_path), num_steps=40, batch_size=64, progress=False, log_every=40)


def test_checks_name_the_row_of_a_batch_and_pass_good_data():
  checks.check_split(_digits(), "data", classes={"label": 10})
  with pytest.raises(ValueError, match="row 105"):
    checks.check_split(_label(10, row=5), "data", classes={"label": 10}, first_row=100)
