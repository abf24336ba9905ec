"""Strict JAX for every test: 8 fake CPU devices, rank promotion raises."""

import atexit
import os
import shutil
import tempfile

# Must be set before jax is imported anywhere. 8 fake CPU devices; LLVM's optimisations off
# (`--xla_backend_optimization_level=0`): the tests' tiny programs spend far longer compiling
# than running, and compile about a third faster without them (same XLA semantics). The
# processes tests start inherit both.
os.environ.setdefault(
  "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
# One compilation cache for the session, its workers and the processes they start: a test
# that trains the same program in three processes (kill, resume, reference) compiles it once,
# and the many tests that train the same tiny configs share their programs. Every program is
# kept (a threshold of 0.5 s made the suite 6-9% slower here).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dl-test-xla-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# One TFDS data dir for the session and all its workers (set here, before pytest-xdist starts
# them, so they inherit it): each data set is prepared once, by the first worker that names it
# (dl.data.loading lets processes take turns on a data set), not once per worker.
if "DL_TEST_DATA_DIR" not in os.environ:
  os.environ["DL_TEST_DATA_DIR"] = tempfile.mkdtemp(prefix="dl-test-tfds-")
  atexit.register(shutil.rmtree, os.environ["DL_TEST_DATA_DIR"], ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


# Files whose tests take 15-65 s each (processes started and killed, notebooks, benchmarks):
# collected first, so that `pytest -n 2` hands them out early and ends on short tests instead
# of one worker finishing a long test while the other waits.
SLOW_FILES = (
  "faults_test.py",
  "notebook_test.py",
  "streaming_test.py",
  "search_test.py",
  "segmentation_test.py",
  "distributed_test.py",
  "generative_test.py",
  "privacy_sampling_test.py",
  "benchmarks_test.py",
  "audit_test.py",
  "trainer_test.py",
  "fit_test.py",
  "privacy_test.py",
  "wheel_test.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  rank = {name: i for i, name in enumerate(SLOW_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable


@pytest.fixture(scope="session", autouse=True)
def data_dir() -> str:
  """The session's TFDS data dir (also seen by subprocesses through DL_DATA_DIR)."""
  path = os.environ["DL_TEST_DATA_DIR"]
  os.environ["DL_DATA_DIR"] = path
  return path
