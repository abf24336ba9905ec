"""Strict JAX for every test: 8 fake CPU devices, rank promotion raises."""

import os

# Must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory) -> str:
  """One TFDS data dir for the session (also seen by subprocesses through DL_DATA_DIR)."""
  path = os.environ.get("DL_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  os.environ["DL_DATA_DIR"] = path
  return path
