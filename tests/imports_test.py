"""dl's imports point down its floors and never round in a cycle.

The floors are declared here, once. A module may import from its own floor's package and any
floor below; an import of a floor above, or a cycle between modules, fails with the line that
made it. Every `import` counts, including those inside functions, since an import written late
to dodge a cycle is the cycle still.
"""

import ast
import importlib
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "dl"

# Lowest first. A package's subpackages share its floor unless named on a floor of their own.
FLOORS = (
  ("dl.core",),
  ("dl.data", "dl.models"),
  ("dl.inference",),
  ("dl.training",),
  ("dl.trust", "dl.generative"),
  ("dl.deploy",),
  ("dl.recipes",),
  ("dl.apps", "dl.search"),
  ("dl.cli",),
  ("dl",),
)


def floor_of(module: str) -> tuple[int, str]:
  """(floor, the package that declares it) of a dotted module name: its longest declared prefix."""
  best = None
  for level, packages in enumerate(FLOORS):
    for package in packages:
      if module == package or module.startswith(package + "."):
        if best is None or len(package) > len(best[1]):
          best = (level, package)
  if best is None:
    raise AssertionError(f"{module} is on no floor: add its package to FLOORS in {__file__}")
  return best


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _shown(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT.parent)) if path.is_relative_to(ROOT.parent) else str(path)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(ROOT.rglob("*.py*")) if p.suffix in {".py", ".pyi"}}


def imports(path: pathlib.Path, modules, name: str) -> list[tuple[str, int]]:
  """(dl module imported, line) for each import of dl in the file at `path`, module `name`."""
  package = name if path.stem == "__init__" else name.rpartition(".")[0]
  found = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found += [(alias.name, node.lineno) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
      for alias in node.names:  # `from dl.x import y`: y is a module or a name in dl.x
        target = f"{base}.{alias.name}"
        found.append((target if target in modules else base, node.lineno))
  return [(m, line) for m, line in found if m == "dl" or m.startswith("dl.")]


def _graph(extra=None):
  modules = {**_modules(), **(extra or {})}
  return modules, {
    name: [(m, line) for m, line in imports(path, modules, name) if m != name]
    for name, path in modules.items()
  }


def test_every_import_points_down(extra=None):
  modules, graph = _graph(extra)
  upward = []
  for name, targets in graph.items():
    level, package = floor_of(name)
    for target, line in targets:
      target_level, target_package = floor_of(target)
      if target_level > level or (target_level == level and target_package != package):
        upward.append(
          f"{_shown(modules[name])}:{line} imports {target} "
          f"(floor {target_level}, {target_package}) from floor {level} ({package})"
        )
  assert not upward, "imports that run up a floor or across it:\n" + "\n".join(upward)


def test_no_import_cycles():
  modules, graph = _graph()
  edges = {name: {t for t, _ in targets if t in modules} for name, targets in graph.items()}
  cycles = [c for c in _strongly_connected(edges) if len(c) > 1]
  assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def _strongly_connected(edges):
  """Tarjan's strongly connected components of `edges` (a dict of name -> set of names)."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      components.append(component)

  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
  for v in list(edges):
    if v not in index:
      visit(v)
  return components


def test_the_check_catches_an_upward_import(tmp_path):
  probe = tmp_path / "probe.py"
  probe.write_text("from dl.training import loop\n")
  with pytest.raises(AssertionError, match="probe.py:1 imports dl.training"):
    test_every_import_points_down({"dl.core._upward_probe": probe})


def test_import_dl_loads_no_floor():
  """`import dl` loads lazy_loader and nothing of jax, tfds or dl's floors until a name is used."""
  code = (
    "import sys; import dl; "
    "print(sorted(m for m in sys.modules if m.split('.')[0] in {'jax', 'tensorflow_datasets', "
    "'grain', 'matplotlib', 'flax', 'optax', 'orbax'} or m.startswith('dl.')))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("stub", sorted(ROOT.rglob("__init__.pyi")), ids=lambda p: str(p.parent))
def test_a_lazy_packages_stub_lists_what_it_gives(stub):
  """A lazy package's `__all__` (the API reference's list) is what lazy_loader gives, and each
  name loads."""
  module = importlib.import_module(_module_name(stub))
  declared = next(
    ast.literal_eval(node.value)
    for node in ast.parse(stub.read_text()).body
    if isinstance(node, ast.Assign) and node.targets[0].id == "__all__"
  )
  assert sorted(declared) == sorted(module.__all__)
  for name in declared:
    getattr(module, name)


PACKAGES = sorted(
  _module_name(p)
  for p in ROOT.rglob("__init__.py")
  # Each command defines its flags (one per process); a builder is imported when its data set
  # is named (dl.data.builders.MODULES).
  if _module_name(p) not in ("dl.cli", "dl.data.builders")
)


# One process: `import dl`, then the third-party libraries dl's modules import, so that
# each forked child pays only for dl's own modules and starts with none of them loaded.
_EACH_PACKAGE_IN_A_FORK = """
import json, os, sys, traceback
import dl
import flax, grain, jax, matplotlib, optax, orbax.checkpoint, tensorflow_datasets
loaded = [m for m in sys.modules if m.startswith("dl.")]
assert not loaded, f"loaded before the fork: {loaded}"
failed = {}
for package, modules in json.loads(sys.argv[1]).items():
  read, write = os.pipe()
  if os.fork() == 0:
    os.close(read)
    try:
      module = dl
      for name in package.split(".")[1:]:
        module = getattr(module, name)
      for name in modules:
        getattr(module, name)
    except BaseException:
      os.write(write, traceback.format_exc().encode())
      os._exit(1)
    os._exit(0)
  os.close(write)
  with os.fdopen(read) as f:
    error = f.read()
  if os.wait()[1] or error:
    failed[package] = error[-1500:]
print(json.dumps(failed))
"""


def test_a_packages_modules_are_its_attributes():
  """`import dl` then `dl.<package>.<module>` works for every module, imported or not yet:
  each package is checked in a fresh fork that has loaded no module of dl but the root."""
  checks = {}
  for package in PACKAGES:
    folder = ROOT.parent / package.replace(".", "/")
    modules = [p.stem for p in folder.glob("[!_]*.py")]
    modules += [p.parent.name for p in folder.glob("*/__init__.py")]
    checks[package] = sorted(modules)
  code, arg = _EACH_PACKAGE_IN_A_FORK, json.dumps(checks)
  result = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  failed = json.loads(result.stdout.splitlines()[-1])
  assert not failed, "\n".join(f"{package}:\n{error}" for package, error in failed.items())
