"""Stamps the repository URL into the notebooks in `colab/`: their Colab badges and install cells.

The URL is one value, `[project.urls] Repository` in pyproject.toml. For a fork, change it
there and run `python tools/stamp_notebooks.py`: it rewrites every notebook's badge and install
cell, and the Colab links of README.md and colab/README.md. tests/notebook_test.py fails on a
notebook or README whose badge, link or install cell does not carry the current URL.
"""

import glob
import os
import re
import sys
import tomllib

import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "colab")
READMES = (os.path.join(REPO, "README.md"), os.path.join(NOTEBOOK_DIR, "README.md"))
COLAB_LINK = re.compile(
  r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/main/colab/"
)
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
INSTALL_BEGIN = "# --- install dl in Colab (stamped by tools/stamp_notebooks.py) ---"
INSTALL_END = "# --- end of install ---"
# The extras of dl (pyproject's [project.optional-dependencies]) each notebook needs in Colab.
EXTRAS = {
  "05_trust.ipynb": ("data",),
  "06_applications.ipynb": ("data",),
  "08_speech_and_medical.ipynb": ("speech", "medical"),
  "09_search.ipynb": ("search",),
}


def notebooks() -> list[str]:
  return sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))


def project(pyproject: str = os.path.join(REPO, "pyproject.toml")) -> tuple[str, str]:
  """The distribution's name and `[project.urls] Repository`, e.g. "https://github.com/dl-jax/dl"."""
  with open(pyproject, "rb") as f:
    table = tomllib.load(f)["project"]
  urls = table.get("urls", {})
  if "Repository" not in urls:
    raise ValueError(f"{pyproject} has no [project.urls] Repository; add the repository's URL")
  return table["name"], urls["Repository"].rstrip("/").removesuffix(".git")


def github_path(url: str) -> str:
  """The "owner/name" of a https://github.com/owner/name URL (Colab opens GitHub notebooks)."""
  match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url)
  if not match:
    raise ValueError(f"expected a https://github.com/<owner>/<name> URL, got {url!r}")
  return match.group(1)


def colab_url(url: str, notebook: str) -> str:
  """Where Colab opens `colab/<notebook>` of the main branch of the GitHub repository `url`."""
  return f"https://colab.research.google.com/github/{github_path(url)}/blob/main/colab/{notebook}"


def badge(url: str, notebook: str) -> str:
  """The markdown of an "Open In Colab" badge for `colab/<notebook>`."""
  return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(url, notebook)})"


def stamp_links(text: str, url: str) -> str:
  """`text` with every Colab link to a notebook of a repository pointing at `url`'s."""
  return COLAB_LINK.sub(colab_url(url, ""), text)


def pip_spec(name: str, url: str, extras: tuple[str, ...] = ()) -> str:
  """The pip requirement that installs the distribution `name` (with `extras`) from `url`."""
  if not extras:
    return f"git+{url}.git"
  return f"{name}[{','.join(extras)}] @ git+{url}.git"


def install_block(spec: str) -> str:
  """The install cell's stamped lines: in Colab only, pip installs `spec` and prints the devices."""
  default = f'DL_PIP_SPEC = os.environ.get("DL_PIP_SPEC", "{spec}")'
  if len(default) > 100:  # as ruff would format it
    default = f'DL_PIP_SPEC = os.environ.get(\n  "DL_PIP_SPEC", "{spec}"\n)'
  return f"""{INSTALL_BEGIN}
# A fork: change [project.urls] Repository in pyproject.toml and restamp, or set DL_PIP_SPEC.
{default}
if "google.colab" in sys.modules:
  if importlib.util.find_spec("dl") is None:
    import importlib.metadata

    # The runtime's jax and jaxlib (on a TPU or GPU runtime, its accelerator builds) stay as
    # they are: required at their installed versions, so pip fits the rest (flax, orbax, ...)
    # to them rather than upgrading jax for the newest flax. No --upgrade, no constraints.
    keep = " ".join(
      f"{{name}}=={{importlib.metadata.version(name)}}"
      for name in ("jax", "jaxlib")
      if importlib.util.find_spec(name)
    )
    %pip install -q "{{DL_PIP_SPEC}}" {{keep}}
  import jax

  print("jax", jax.__version__, "devices:", jax.devices())
{INSTALL_END}"""


def _stamp_badge(cell, line: str) -> None:
  lines = cell.source.split("\n")
  if lines[0].startswith("[![Open In Colab]"):
    lines = lines[2:] if len(lines) > 1 and not lines[1] else lines[1:]
  cell.source = "\n".join([line, ""] + lines)


def _stamp_install(cell, block: str) -> None:
  if INSTALL_BEGIN not in cell.source:
    raise ValueError(f"the install cell has no line {INSTALL_BEGIN!r}:\n{cell.source}")
  before, rest = cell.source.split(INSTALL_BEGIN, 1)
  if INSTALL_END not in rest:
    raise ValueError(f"the install cell has no line {INSTALL_END!r}:\n{cell.source}")
  cell.source = before + block + rest.split(INSTALL_END, 1)[1]


def install_cell(nb):
  """The first code cell: the one that installs dl."""
  return next(cell for cell in nb.cells if cell.cell_type == "code")


def stamp(nb, notebook: str, name: str, url: str) -> None:
  """Writes `url` into `nb`'s badge (first markdown cell) and install cell, in place."""
  if nb.cells[0].cell_type != "markdown":
    raise ValueError(f"{notebook}: the first cell should be markdown (title and badge)")
  _stamp_badge(nb.cells[0], badge(url, notebook))
  spec = pip_spec(name, url, EXTRAS.get(notebook, ()))
  _stamp_install(install_cell(nb), install_block(spec))


def main() -> None:
  name, url = project()
  for path in notebooks():
    nb = nbformat.read(path, as_version=4)
    stamp(nb, os.path.basename(path), name, url)
    nbformat.write(nb, path)
    print(f"stamped {os.path.relpath(path, REPO)} with {url}", file=sys.stderr)
  for path in READMES:
    with open(path) as f:
      text = f.read()
    with open(path, "w") as f:
      f.write(stamp_links(text, url))


if __name__ == "__main__":
  main()
