"""Runs every notebook in `colab/` top to bottom, in smoke mode (`DL_NOTEBOOK_SMOKE=1`)."""

import glob
import os
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")))


def _kernel_manager() -> KernelManager:
  """A `python3` kernel on this interpreter, whatever kernelspecs are installed.

  With no kernel directories, jupyter_client falls back to the ipykernel this
  interpreter imports, whose spec runs `sys.executable`.
  """
  specs = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
  return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def test_kernel_runs_this_interpreter():
  km = _kernel_manager()
  assert km.kernel_spec.argv[0] == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  # The kernel inherits this environment, DL_DATA_DIR from conftest included.
  monkeypatch.setenv("DL_NOTEBOOK_SMOKE", "1")
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(
    nb,
    km=_kernel_manager(),
    timeout=300,
    resources={"metadata": {"path": str(tmp_path)}},
  )
  client.execute()  # Raises CellExecutionError, with the cell and traceback, on any error.
