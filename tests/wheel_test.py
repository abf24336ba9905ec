"""The wheel: built from a copy of the source, installed into a fresh venv, its commands run.

The build is uv's, isolated: setuptools alone, no jax, so the version must be read from
dl/__init__.py's text. The fresh venv borrows the dependencies installed beside this
interpreter through a .pth line naming their site-packages (whose own .pth files, dl's editable
finder among them, are not run), so nothing is downloaded; dl itself must come from the wheel.
"""

import configparser
import email.parser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# Each command and a flag its --help names.
COMMANDS = {
  "dl-train": "--config:",
  "dl-predict": "--model MODEL",
  "dl-launch": "--num_processes:",
  "dl-search": "--algorithm:",
}
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
  out = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
  tail = (out.stdout + out.stderr)[-3000:]
  assert out.returncode == 0, f"{command} exited {out.returncode}:\n{tail}"
  return out


def _source_files() -> set[str]:
  """The paths under dl/ a wheel must hold, relative to the repository."""
  return {
    p.relative_to(REPO).as_posix()
    for p in (REPO / "dl").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
  }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """The wheel uv builds from a copy of dl/, pyproject.toml and README.md."""
  source = tmp_path_factory.mktemp("source")
  shutil.copytree(REPO / "dl", source / "dl", ignore=IGNORED)
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, source)
  dist = tmp_path_factory.mktemp("dist")
  _run([sys.executable, "-m", "uv", "build", "--wheel", "--out-dir", str(dist), str(source)])
  (path,) = dist.glob("*.whl")
  return path


def test_wheel_holds_every_file_of_dl_its_name_version_and_commands(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    metadata = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
    entry_points = configparser.ConfigParser()
    entry_points.read_string(z.read(f"{info}/entry_points.txt").decode())
  assert "dl/py.typed" in names
  missing = _source_files() - names
  assert not missing, f"not in the wheel (pyproject's [tool.setuptools.package-data]?): {missing}"
  with open(REPO / "pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
  init = (REPO / "dl" / "__init__.py").read_text()
  (version,) = re.findall(r'^__version__ = "([^"]+)"$', init, re.MULTILINE)
  assert (metadata["Name"], metadata["Version"]) == (project["name"], version)
  assert project["name"] != "dl", "`dl` on the package index is an unrelated project"
  urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
  assert urls["Repository"] == project["urls"]["Repository"]
  assert set(entry_points["console_scripts"]) == set(COMMANDS)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> pathlib.Path:
  """A fresh venv with the wheel installed and this interpreter's dependencies borrowed."""
  path = tmp_path_factory.mktemp("venv")
  _run([sys.executable, "-m", "venv", "--without-pip", str(path)])
  python = path / "bin" / "python"
  code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
  site = pathlib.Path(_run([python, "-c", code]).stdout.strip())
  borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  (site / "borrowed_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(borrowed)))
  install = ["pip", "install", "--python", str(python), "--no-deps", "--offline"]
  _run([sys.executable, "-m", "uv", *install, "--compile-bytecode", str(wheel)])
  return path


@pytest.fixture
def outside(tmp_path) -> dict:
  """subprocess arguments: another directory, no PYTHONPATH."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return {"cwd": tmp_path, "env": env}


def test_dl_comes_from_the_wheel_not_the_repository(venv, outside):
  where = "import importlib.util; print(importlib.util.find_spec('dl').origin)"
  dl_file = _run([venv / "bin" / "python", "-c", where], **outside).stdout.strip()
  assert pathlib.Path(dl_file).is_relative_to(venv), dl_file


def test_each_command_prints_its_help(venv, outside):
  # All four at once (each imports dl). absl's --help exits 1 (STACK.md): the text is checked.
  helps = {
    name: subprocess.Popen(
      [venv / "bin" / name, "--help"], stdout=subprocess.PIPE, text=True, **outside
    )
    for name in COMMANDS
  }
  for name, process in helps.items():
    text = process.communicate(timeout=300)[0]
    assert COMMANDS[name] in text, f"{name} --help:\n{text}"


def test_dl_train_trains_from_another_directory(venv, outside, tmp_path):
  workdir = tmp_path / "W"
  tiny = ["--config.fit.num_steps=10", "--config.fit.eval_every=10"]
  tiny += ["--config.fit.progress=false", "--config.fit.tensorboard=false"]
  config = REPO / "experiments" / "digits_cnn.py"
  train = [venv / "bin" / "dl-train", f"--config={config}", f"--workdir={workdir}", *tiny]
  summary = json.loads(_run(train, **outside).stdout.strip().splitlines()[-1])
  assert summary["test_step"] == 10 and 0 <= summary["test_accuracy"] <= 1, summary
  assert (workdir / "metrics.jsonl").stat().st_size > 0
  assert os.listdir(workdir / "checkpoints") == ["10"]
