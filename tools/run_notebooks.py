"""Executes the notebooks in `colab/` in full mode and writes them back with their outputs.

  python tools/run_notebooks.py                    # all of them, one after another
  python tools/run_notebooks.py 01_quickstart      # or some, by name (with or without .ipynb)

Each notebook is first restamped (tools/stamp_notebooks.py: its badge and install cell), then
run top to bottom by nbclient on this interpreter's ipykernel, without `DL_NOTEBOOK_SMOKE`, in
a fresh temporary directory. Its outputs are kept small: inline figures at `figure.dpi` 80
(dl's own plots are PNGs at 100 dpi), every PNG re-encoded with a 256-colour palette, stream
outputs merged as a terminal would show them (a progress bar keeps its last state), no
execution timestamps. The wall time of each run goes into the notebook's metadata
(`dl.full_mode`) and into the table in colab/README.md. Afterwards it lists what
tests/notebook_test.py would fail on in the file written: no outputs, no image where the
notebook plots, an error, a figure its markdown quotes that the outputs do not hold.
"""

import argparse
import base64
import io
import os
import re
import sys
import tempfile
import time

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stamp_notebooks

REPO = stamp_notebooks.REPO
README = os.path.join(REPO, "colab", "README.md")
TABLE_BEGIN = "<!-- timings: written by tools/run_notebooks.py -->"
TABLE_END = "<!-- end of timings -->"
FIGURE_DPI = 80
PLOTS = re.compile(r"plt\.show\(\)|display\(Image\(")
# A quoted figure: a number with a decimal point or an exponent (0.98, 7.8e-7, 97.22%).
FIGURE = re.compile(r"(?<![\w.@])\d+(?:,\d{3})*(?:\.\d+(?:[eE][-+]?\d+)?|[eE][-+]?\d+)(?![\w.]*\d)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CITED_FILE = re.compile(r"`((?:experiments|benchmarks)/[\w./-]+\.md)`")


def kernel_manager() -> KernelManager:
  """A `python3` kernel on this interpreter, whatever kernelspecs are installed.

  With no kernel directories, jupyter_client falls back to the ipykernel this
  interpreter imports, whose spec runs `sys.executable`.
  """
  specs = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
  return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _as_terminal_shows(text: str, drop_blank: bool) -> str:
  """Of each line, the part after its last carriage return; no ANSI escapes.

  Nested progress bars (TFDS preparing a data set, on stderr) move the cursor up with
  escapes; without them, each bar's last state stays on a line of its own, and the lines
  they blanked are dropped where `drop_blank`.
  """
  lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in ANSI.sub("", text).split("\n")]
  if drop_blank:
    lines = [line for line in lines if line.strip()] + ([""] if text.endswith("\n") else [])
  return "\n".join(lines)


def _merge_streams(outputs: list) -> list:
  """Each run of stream outputs (no display between) as one stdout and one stderr output.

  A progress bar on stderr interleaved with log lines on stdout becomes the log lines and
  the bar's last state, as a terminal would leave them.
  """
  merged, run = [], {}
  for output in outputs:
    if output.output_type != "stream":
      merged.append(output)
      run = {}
    elif output.name in run:
      run[output.name].text += output.text
    else:
      run[output.name] = output
      merged.append(output)
  for output in merged:
    if output.output_type == "stream":
      output.text = _as_terminal_shows(output.text, drop_blank=output.name == "stderr")
  return [output for output in merged if output.output_type != "stream" or output.text]


def _smaller_png(encoded: str) -> str:
  """The PNG as a 256-colour palette image (a plot loses nothing visible), if that is smaller."""
  raw = base64.b64decode(encoded)
  image = Image.open(io.BytesIO(raw)).convert("RGBA")
  flat = Image.new("RGBA", image.size, "white")
  flat.alpha_composite(image)
  buffer = io.BytesIO()
  flat.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
    buffer, "PNG", optimize=True
  )
  if buffer.tell() >= len(raw):
    return encoded
  return base64.b64encode(buffer.getvalue()).decode("ascii")


def clean_outputs(nb) -> None:
  """Merges stream outputs, resolves carriage returns, shrinks PNGs, drops execution timings."""
  for cell in nb.cells:
    cell.metadata.pop("execution", None)
    if cell.cell_type != "code":
      continue
    cell.outputs = _merge_streams(cell.outputs)
    for output in cell.outputs:
      data = output.get("data", {})
      if "image/png" in data:
        data["image/png"] = _smaller_png(data["image/png"])


def execute(nb, smoke: bool, timeout: int, cwd: str) -> None:
  """Runs `nb` in place on a kernel of this interpreter (smoke mode sets DL_NOTEBOOK_SMOKE=1)."""
  saved = {k: os.environ.get(k) for k in ("DL_NOTEBOOK_SMOKE", "MATPLOTLIBRC")}
  with tempfile.TemporaryDirectory(prefix="dl-mplrc-") as rc_dir:
    with open(os.path.join(rc_dir, "matplotlibrc"), "w") as f:
      f.write(f"figure.dpi: {FIGURE_DPI}\n")
    os.environ["MATPLOTLIBRC"] = rc_dir  # the kernel inherits this environment
    if smoke:
      os.environ["DL_NOTEBOOK_SMOKE"] = "1"
    else:
      os.environ.pop("DL_NOTEBOOK_SMOKE", None)
    km = kernel_manager()
    try:
      client = NotebookClient(
        nb,
        km=km,
        timeout=timeout,
        record_timing=False,
        resources={"metadata": {"path": cwd}},
      )
      client.execute()  # Raises CellExecutionError, with the cell and traceback, on any error.
    finally:
      # nbclient shuts down only the kernels it made: without this, each notebook's kernel
      # lives on, holding its memory and threads, until the calling process exits.
      if km.has_kernel:
        km.shutdown_kernel(now=True)
      for key, value in saved.items():
        if value is None:
          os.environ.pop(key, None)
        else:
          os.environ[key] = value


def output_text(nb) -> str:
  """Every text output of `nb` (streams, text/plain, text/html, errors), joined."""
  parts = []
  for cell in nb.cells:
    for output in cell.get("outputs", []):
      if output.output_type == "stream":
        parts.append(output.text)
      elif output.output_type in ("execute_result", "display_data"):
        data = output.get("data", {})
        parts += [data[k] for k in ("text/plain", "text/html", "text/markdown") if k in data]
      elif output.output_type == "error":
        parts.append("\n".join(output.traceback))
  return "\n".join(parts)


def has_image(nb) -> bool:
  return any(
    "image/png" in output.get("data", {}) for cell in nb.cells for output in cell.get("outputs", [])
  )


def plots(nb) -> bool:
  """Whether some code cell shows a figure (`plt.show()` or `display(Image(...))`)."""
  return any(cell.cell_type == "code" and PLOTS.search(cell.source) for cell in nb.cells)


def _prose(markdown: str) -> str:
  """Markdown less inline code, URLs and LaTeX: what remains is prose."""
  markdown = re.sub(r"`[^`]*`", " ", markdown)
  markdown = re.sub(r"\]\([^)]*\)", "]", markdown)
  return re.sub(r"\$[^$]*\$", " ", markdown)


def quoted_figures(nb) -> list[tuple[str, str | None]]:
  """(figure, cited file or None) for each figure quoted in a markdown cell after the install cell.

  A paragraph that names a results file in inline code (`experiments/results_plan.md`)
  quotes that file's figures; any other paragraph quotes the notebook's own outputs.
  """
  first_code = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
  found = []
  for cell in nb.cells[first_code + 1 :]:
    if cell.cell_type != "markdown":
      continue
    for paragraph in re.split(r"\n\s*\n", cell.source):
      cited = CITED_FILE.search(paragraph)
      for figure in FIGURE.findall(_prose(paragraph)):
        found.append((figure, cited.group(1) if cited else None))
  return found


def _appears(figure: str, text: str) -> bool:
  return re.search(rf"(?<![\d.]){re.escape(figure)}(?!\d)", text) is not None


def stale_figures(nb) -> list[str]:
  """The quoted figures missing from their source (the outputs, or the file cited)."""
  outputs = output_text(nb)
  missing = []
  for figure, cited in quoted_figures(nb):
    if cited is None:
      if not _appears(figure, outputs):
        missing.append(f"{figure} (not in the outputs)")
    else:
      with open(os.path.join(REPO, cited)) as f:
        if not _appears(figure, f.read()):
          missing.append(f"{figure} (not in {cited})")
  return missing


def problems(nb) -> list[str]:
  """What tests/notebook_test.py would fail on in an executed notebook."""
  found = []
  if not any(cell.get("outputs") for cell in nb.cells):
    found.append("no outputs")
  if plots(nb) and not has_image(nb):
    found.append("plots, but holds no image/png output")
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
  if errors:
    found.append(f"{len(errors)} error output(s)")
  found += [f"quoted figure {figure}" for figure in stale_figures(nb)]
  return found


def write_table(paths: list[str]) -> None:
  """Rewrites colab/README.md's table of full-mode wall times and file sizes."""
  url = stamp_notebooks.project()[1]
  rows = ["| notebook | Colab | full-mode run | file size |", "| --- | --- | ---: | ---: |"]
  for path in paths:
    name = os.path.basename(path)
    run = nbformat.read(path, as_version=4).metadata.get("dl", {}).get("full_mode")
    took = f"{run['seconds'] / 60:.1f} min ({run['machine']})" if run else "not run"
    size = f"{os.path.getsize(path) / 1024:.0f} KB"
    rows.append(f"| [`{name}`]({name}) | {stamp_notebooks.badge(url, name)} | {took} | {size} |")
  with open(README) as f:
    text = f.read()
  head, rest = text.split(TABLE_BEGIN, 1)
  tail = rest.split(TABLE_END, 1)[1]
  with open(README, "w") as f:
    f.write(head + TABLE_BEGIN + "\n" + "\n".join(rows) + "\n" + TABLE_END + tail)


def run(path: str, timeout: int) -> float:
  """Restamps, executes in full mode and writes back one notebook; returns its wall seconds."""
  name = os.path.basename(path)
  nb = nbformat.read(path, as_version=4)
  stamp_notebooks.stamp(nb, name, *stamp_notebooks.project())
  with tempfile.TemporaryDirectory(prefix="dl-notebook-") as cwd:
    start = time.perf_counter()
    execute(nb, smoke=False, timeout=timeout, cwd=cwd)
    seconds = time.perf_counter() - start
  clean_outputs(nb)
  machine = f"{os.cpu_count()} CPU cores"
  nb.metadata.setdefault("dl", {})["full_mode"] = {"seconds": round(seconds, 1), "machine": machine}
  nbformat.write(nb, path)
  return seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
  parser.add_argument("--timeout", type=int, default=900, help="seconds one cell may take")
  args = parser.parse_args()
  paths = stamp_notebooks.notebooks()
  chosen = [
    p
    for p in paths
    if not args.names
    or os.path.basename(p).removesuffix(".ipynb") in {n.removesuffix(".ipynb") for n in args.names}
  ]
  if args.names and len(chosen) != len(args.names):
    parser.error(
      f"unknown notebook among {args.names}; known: {[os.path.basename(p) for p in paths]}"
    )
  for path in chosen:
    seconds = run(path, args.timeout)
    size = os.path.getsize(path) / 1024
    print(f"{os.path.basename(path)}: {seconds:.0f} s, {size:.0f} KB", flush=True)
    for problem in problems(nbformat.read(path, as_version=4)):
      print(f"  {problem}", flush=True)
  write_table(paths)


if __name__ == "__main__":
  main()
