r"""Command line: the memory plan of a config on a mesh, before anything is allocated.

Prints the table of `dl.plan`: every state leaf's layout and bytes on each device, the
per-device totals of parameters, optimizer state and gradients, and (unless --no_compile)
XLA's memory and cost analysis of the compiled train step.

  python -m dl.cli.plan --config experiments/plan_1b_lm.py --devices 256 \
      --mesh_shape fsdp=64,model=4 [--batch_size 256] [--no_compile] [--config.key=value ...]

--devices N plans for N virtual CPU devices (set before JAX starts its backends), so a
layout for a pod can be checked on a laptop. --json prints `Plan.to_dict()` instead.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dl.recipes import plan as plan_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (get_config()).", lock_config=True
)
_MESH_SHAPE = flags.DEFINE_string(
  "mesh_shape", None, "The mesh, e.g. data=2,fsdp=2,model=2 (default: the config's)."
)
_PARALLEL = flags.DEFINE_enum(
  "parallel", None, ["data", "fsdp", "mesh"], "Mesh mode (default: the config's, else mesh)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Examples per step (default: the config's).")
_DEVICES = flags.DEFINE_integer("devices", None, "Plan for this many virtual CPU devices.")
_NO_COMPILE = flags.DEFINE_bool("no_compile", False, "Skip compiling the step (state only).")
_EXAMPLE_SHAPES = flags.DEFINE_string(
  "example_shapes", "", "Per-example shapes replacing the data's, e.g. input=2048,label=2048."
)
_ROWS = flags.DEFINE_integer("rows", 30, "Leaf rows shown, widest first (0: all).")
_JSON = flags.DEFINE_bool("json", False, "Print the plan as JSON instead of the table.")
flags.mark_flags_as_required(["config"])


def parse_example_shapes(text: str) -> dict[str, tuple[int, ...]]:
  """Parses "input=2048,label=2048" or "image=32x32x3" into {key: shape}."""
  shapes = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    key, _, dims = part.partition("=")
    if not key or not all(d.isdigit() for d in dims.split("x")):
      raise ValueError(
        f"example_shapes must look like 'input=2048,label=2048' (dimensions joined by 'x'); "
        f"got {text!r}."
      )
    shapes[key] = tuple(int(d) for d in dims.split("x"))
  return shapes


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  try:
    plan = plan_lib.plan(
      _CONFIG.value,
      mesh_shape=_MESH_SHAPE.value,
      parallel=_PARALLEL.value,
      batch_size=_BATCH_SIZE.value,
      devices=_DEVICES.value,  # first: before anything starts JAX's backends
      compile=not _NO_COMPILE.value,
      example_shapes=parse_example_shapes(_EXAMPLE_SHAPES.value),
    )
  except ValueError as e:  # a bad mesh, batch or layout: one line says it
    print(f"dl: {e}", file=sys.stderr)
    sys.exit(1)
  if _JSON.value:
    print(json.dumps(plan.to_dict(), default=str))
  else:
    print(plan.format(max_rows=_ROWS.value or None))


if __name__ == "__main__":
  app.run(main)
