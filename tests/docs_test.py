"""The API reference (mkdocs + mkdocstrings, mkdocs.yml) builds with warnings as errors.

A warning is a broken cross-reference, a docstring griffe cannot parse (an Args entry that
names no parameter, ...), or a public function, class or module without a docstring
(docs/hooks.py). The last two tests show that each of those fails a build.
"""

import os
import subprocess
import sys
import textwrap

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(config_file: str, site_dir: str, pythonpath: str = "") -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, REPO) if p))
  return subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config_file, "-d", site_dir],
    capture_output=True,
    text=True,
    check=False,  # the tests read the output of a failed build
    cwd=REPO,
    env=env,
  )


def test_api_reference_builds_without_warnings(tmp_path):
  result = _build(os.path.join(REPO, "mkdocs.yml"), str(tmp_path / "site"))
  assert result.returncode == 0, result.stderr
  with open(tmp_path / "site" / "api" / "dl" / "index.html") as f:
    page = f.read()
  assert "dl.fit" in page and "dl.task" in page  # the entry points, with their docstrings


def _fake_project(tmp_path, module_source: str) -> str:
  """A one-page site documenting package `fake` with the repository's mkdocs.yml settings."""
  (tmp_path / "fake").mkdir()
  (tmp_path / "fake" / "__init__.py").write_text(module_source)
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "index.md").write_text("# fake\n\n::: fake\n")
  with open(os.path.join(REPO, "mkdocs.yml")) as f:
    config = yaml.safe_load(f)
  config.update(
    docs_dir=str(tmp_path / "docs"),
    hooks=[os.path.join(REPO, "docs", "hooks.py")],
    nav=["index.md"],
  )
  path = tmp_path / "mkdocs.yml"
  path.write_text(yaml.safe_dump(config))
  return str(path)


DOCUMENTED = textwrap.dedent('''
  """A package."""


  def documented(x: int) -> int:
    """Returns `x`; see [documented][fake.documented].

    Args:
      x: any number.
    """
    return x
''')


def test_a_documented_fake_package_builds(tmp_path):
  result = _build(_fake_project(tmp_path, DOCUMENTED), str(tmp_path / "site"), str(tmp_path))
  assert result.returncode == 0, result.stderr


def test_an_undocumented_name_or_a_broken_reference_fails(tmp_path):
  broken = DOCUMENTED.replace("[fake.documented]", "[fake.missing]") + (
    "\n\ndef undocumented(x: int) -> int:\n  return x\n"
  )
  result = _build(_fake_project(tmp_path, broken), str(tmp_path / "site"), str(tmp_path))
  assert result.returncode != 0
  assert "public name fake.undocumented has no docstring" in result.stderr
  assert "fake.missing" in result.stderr  # autorefs: the cross-reference has no target
