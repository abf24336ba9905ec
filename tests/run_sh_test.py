"""README's two commands: `bash run.sh train` and `bash run.sh test` name modules that exist."""

import importlib.util
import pathlib
import re

RUN_SH = pathlib.Path(__file__).resolve().parent.parent / "run.sh"


def test_every_module_run_sh_starts_exists():
  modules = re.findall(r'"\$PY" -m ([\w.]+)', RUN_SH.read_text())
  assert "dl.cli.train" in modules and "pytest" in modules, modules
  for module in modules:
    assert importlib.util.find_spec(module) is not None, (
      f"run.sh runs `-m {module}`: no such module"
    )
