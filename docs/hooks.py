"""mkdocs hook: a public function, class or module on a page without a docstring is a warning.

`mkdocs build --strict` turns the warning into an error, so the reference cannot show an
undocumented public name. A page's objects are its `::: dl...` lines and, within each, what
mkdocstrings renders with `filters: ["!^_"]`: griffe's public members (a module's `__all__`,
else its names without a leading underscore that it does not import) less special methods,
submodules and attributes aside (a submodule has its own `:::` line where it is documented;
attributes are described in their owner's docstring).
"""

import functools
import os
import re
import sys

import griffe
from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger("undocumented")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENTIFIER = re.compile(r"^::: *([\w.]+)", re.MULTILINE)


@functools.cache
def _package(name: str) -> griffe.Module:
  # As mkdocs.yml's handler loads it: an overriding method inherits its base's docstring.
  extensions = griffe.load_extensions("griffe_inherited_docstrings")
  return griffe.load(
    name, search_paths=[REPO, *sys.path], extensions=extensions, resolve_aliases=True
  )


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object | None:
  """The object an alias points to; None where it lies outside the packages loaded (not ours)."""
  try:
    return obj.final_target if obj.is_alias else obj
  except griffe.AliasResolutionError:
    return None


def undocumented(obj: griffe.Object | griffe.Alias) -> list[str]:
  """Paths of `obj` and its public functions and classes that have no docstring."""
  target = _target(obj)
  if target is None or target.is_attribute:
    return []
  missing = [] if target.docstring and target.docstring.value.strip() else [target.path]
  for member in target.members.values():
    if member.name.startswith("_") or not member.is_public or member.is_module:
      continue
    if target.is_class and _target(member) is not None and _target(member).parent is not target:
      continue  # inherited: documented where it is defined
    missing += undocumented(member)
  return missing


def on_page_markdown(markdown: str, page, **kwargs) -> str:
  del kwargs
  for identifier in IDENTIFIER.findall(markdown):
    package, *parts = identifier.split(".")
    obj = _package(package)
    for part in parts:
      obj = obj.members[part]
    for path in undocumented(obj):
      log.warning(f"{page.file.src_path}: public name {path} has no docstring")
  return markdown
