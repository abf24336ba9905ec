"""A tiny digits CNN trained and exported once per test session, shared by the export tests."""

import functools
import tempfile

from tiny_config import tiny_config

import dl
from dl import export


def cnn_config():
  """A CNN (features 4) that reaches ~90% test accuracy on digits in 300 steps."""
  return tiny_config(
    model={"name": "cnn", "features": 4, "hidden": 16},
    num_train_steps=300,
    learning_rate=1e-2,
    log_every_steps=100,
    eval_every_steps=300,
  )


@functools.cache
def exported_cnn() -> tuple:
  """(task, state, workdir, export directory) of the trained, exported CNN."""
  root = tempfile.mkdtemp(prefix="dl_export_test_")
  config = cnn_config()
  state, _ = dl.train(config, f"{root}/run")
  task = dl.build(config)
  export.export(task, state, f"{root}/export", batch_sizes=(1, 50), workdir=f"{root}/run")
  return task, state, f"{root}/run", f"{root}/export"
