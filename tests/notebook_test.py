"""The notebooks in `colab/`: each runs in smoke mode, and each committed file shows its results.

`test_notebook_runs` executes every notebook top to bottom in smoke mode (`DL_NOTEBOOK_SMOKE=1`)
in memory: the committed file is not written. The other tests execute nothing; they read the
committed files, which `python tools/run_notebooks.py` writes from a full-mode run, and check
that each one holds outputs of every code cell (none an error), an image/png output where it
plots (`plt.show()` or `display(Image(...))`), the metadata of a full-mode run, the current
badge and install cell (tools/stamp_notebooks.py, from pyproject's `[project.urls]
Repository`), and every figure its markdown quotes.

A quoted figure is a number written with a decimal point or an exponent (0.98, 7.8e-7,
97.22%) in the prose of a markdown cell after the install cell; inline code, link targets
and LaTeX are not prose, and neither is a number glued to a word (`mAP@0.5`, `v1.2`). It must
appear, as written, in the text of the notebook's outputs (a longer number does not count:
0.97 is not found in 0.975), or, in a paragraph that names a results file in inline code
(`experiments/results_plan.md`), in that file. So prose quotes figures as the outputs print
them, and a rerun that changes a figure fails here until the prose says the new one.
Integers are not checked (section numbers, sizes and counts of the setup would drown the
quoted results).
"""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name: str):
  path = os.path.join(REPO, "tools", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


run_notebooks = _tool("run_notebooks")
stamp = run_notebooks.stamp_notebooks
NOTEBOOKS = stamp.notebooks()


def _read(path: str):
  return nbformat.read(path, as_version=4)


def test_kernel_runs_this_interpreter():
  km = run_notebooks.kernel_manager()
  assert km.kernel_spec.argv[0] == sys.executable


def test_execute_shuts_its_kernel_down(tmp_path):
  """Each run's kernel ends with it (a suite of ten notebooks once kept ten kernels alive)."""

  def children():
    pgrep = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True)
    return set(pgrep.stdout.split())

  before = children()
  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
  run_notebooks.execute(nb, smoke=True, timeout=60, cwd=str(tmp_path))
  assert nb.cells[0].outputs[0]["text"] == "1\n"
  assert children() <= before


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path):
  # The kernel inherits this environment, DL_DATA_DIR from conftest included.
  with open(path, "rb") as f:
    committed = f.read()
  nb = _read(path)
  run_notebooks.execute(nb, smoke=True, timeout=300, cwd=str(tmp_path))  # raises on any error
  with open(path, "rb") as f:
    assert f.read() == committed  # smoke outputs stay in memory


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_notebook_shows_its_results(path):
  nb = _read(path)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert all(cell.execution_count for cell in code), "a code cell was not executed"
  assert any(cell.outputs for cell in code), "no outputs"
  errors = [o.ename for cell in code for o in cell.outputs if o.output_type == "error"]
  assert not errors
  if run_notebooks.plots(nb):
    assert run_notebooks.has_image(nb), "it plots, but holds no image/png output"
  assert nb.metadata["dl"]["full_mode"]["seconds"] > 0  # written by a full-mode run
  assert run_notebooks.stale_figures(nb) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_badge_and_install_cell_carry_the_repository_url(path):
  name, url = stamp.project()
  notebook = os.path.basename(path)
  nb = _read(path)
  assert nb.cells[0].source.split("\n")[0] == stamp.badge(url, notebook)
  spec = stamp.pip_spec(name, url, stamp.EXTRAS.get(notebook, ()))
  assert stamp.install_block(spec) in stamp.install_cell(nb).source
  assert "YOUR_GITHUB_USER" not in nbformat.writes(nb)


def test_readme_links_open_this_repository():
  url = stamp.project()[1]
  for path in stamp.READMES:
    with open(path) as f:
      text = f.read()
    assert stamp.COLAB_LINK.search(text), f"{path} has no Colab link"
    assert stamp.stamp_links(text, url) == text, f"{path}: a Colab link to another repository"


def test_stamping_follows_the_url():
  nb = _read(NOTEBOOKS[0])
  notebook = os.path.basename(NOTEBOOKS[0])
  stamp.stamp(nb, notebook, "dl", "https://github.com/someone/fork")
  assert nb.cells[0].source.startswith(
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    f"(https://colab.research.google.com/github/someone/fork/blob/main/colab/{notebook})\n"
  )
  assert '"git+https://github.com/someone/fork.git"' in stamp.install_cell(nb).source
  stamped_twice = nbformat.writes(nb)
  stamp.stamp(nb, notebook, "dl", "https://github.com/someone/fork")
  assert nbformat.writes(nb) == stamped_twice
  assert stamp.pip_spec("dl-x", "https://github.com/a/b", ("speech",)) == (
    "dl-x[speech] @ git+https://github.com/a/b.git"
  )


def _notebook(markdown: str, output: str):
  nb = nbformat.v4.new_notebook()
  nb.cells = [
    nbformat.v4.new_markdown_cell("# title"),
    nbformat.v4.new_code_cell("# install"),
    nbformat.v4.new_markdown_cell(markdown),
    nbformat.v4.new_code_cell("print(...)"),
  ]
  nb.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text=output)]
  return nb


def test_a_stale_quoted_figure_is_found():
  printed = "test accuracy 0.9722, gap 7.8e-07\n"
  fresh = _notebook("It reaches 0.9722 (gap 7.8e-07); `lr=0.003` and mAP@0.5 are names.", printed)
  assert run_notebooks.stale_figures(fresh) == []
  stale = _notebook("It reaches 0.9750, and 0.97 is not 0.9722 either.", printed)
  assert run_notebooks.stale_figures(stale) == [
    "0.9750 (not in the outputs)",
    "0.97 (not in the outputs)",
  ]
  cited = _notebook("Per device: 59.75 MiB and 12.5 MiB (`experiments/results_plan.md`).", "")
  assert run_notebooks.stale_figures(cited) == ["12.5 (not in experiments/results_plan.md)"]


# Runs an install cell as in Colab (google.colab imported, dl not installed) in an IPython
# shell whose %pip only records what it is asked; a process of its own, since an IPython shell
# changes __main__, builtins and the warning filters of the process it lives in.
_AS_IN_COLAB = """
import importlib.util, json, sys, types
import jax  # before the fake google.colab: jax's Colab debugger imports google.colab.output
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
asked = []
shell.register_magic_function(asked.append, magic_kind="line", magic_name="pip")
sys.modules["google.colab"] = types.ModuleType("google.colab")
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "dl" else find_spec(name, *a)
shell.run_cell(sys.argv[1]).raise_error()
print(json.dumps(asked))
"""


def test_install_cell_keeps_the_runtimes_jax():
  path = os.path.join(REPO, "colab", "01_quickstart.ipynb")
  env = {k: v for k, v in os.environ.items() if k != "DL_PIP_SPEC"}
  cell = stamp.install_cell(_read(path)).source
  result = subprocess.run(
    [sys.executable, "-c", _AS_IN_COLAB, cell], capture_output=True, text=True, env=env, check=True
  )
  name, url = stamp.project()
  versions = {p: importlib.metadata.version(p) for p in ("jax", "jaxlib")}
  assert json.loads(result.stdout.splitlines()[-1]) == [
    f'install -q "{stamp.pip_spec(name, url)}" jax=={versions["jax"]} jaxlib=={versions["jaxlib"]}'
  ]
  assert "devices:" in result.stdout  # the cell prints jax's devices after installing
