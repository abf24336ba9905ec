"""Command-line entry points: `python -m dl.cli.train`, `.predict`, `.launch`, `.search`, `.plan`.

The top floor: it may import any of dl. Installed, the same programs are the commands
`dl-train`, `dl-predict`, `dl-launch` and `dl-search`, pyproject's [project.scripts].
"""

import sys
from collections.abc import Callable

from absl import app, flags


def run(module_name: str, main: Callable[[list[str]], None]) -> None:
  """Runs absl's `main` as `python -m <module_name>` would, with the same `--help`.

  A command's `__main__` is the small script pip writes, so absl's `--help` would show
  neither the module's docstring nor its flags: both are lent to `__main__` first.
  """
  sys.modules["__main__"].__doc__ = sys.modules[module_name].__doc__
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)
