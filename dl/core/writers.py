"""Where metrics go: JSON lines (any tool reads them), TensorBoard events, a PNG plot."""

import json
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

# What a train record says about the run rather than the model (not plotted, not on the bar).
RUN_FIGURES = (
  "examples_per_sec",
  "model_flops_per_step",
  "tflops_per_sec_per_device",
  "mfu",
  "compile_seconds",
)

History = dict[str, list[dict[str, float]]]


class MetricWriter:
  """Appends {"split", "step", **metrics} records to `<workdir>/metrics.jsonl` and TensorBoard."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a")
    self._tb = None
    if tensorboard:
      import tensorboardX  # Only imported when asked for.

      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, split: str, step: int, metrics: Mapping[str, float | list[float]]) -> None:
    """Writes one record; list values (one per ensemble member) become member_i scalars."""
    record = {"split": split, "step": int(step), **metrics}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
          tag = f"{split}/{name}" + (f"/member_{i}" if isinstance(value, list) else "")
          self._tb.add_scalar(tag, float(v), int(step))

  def close(self) -> None:
    """Closes metrics.jsonl and the TensorBoard writer."""
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_history(path: str) -> History:
  """Reads a `metrics.jsonl` back into {"train": [...], "eval": [...]}; later records win."""
  by_key: dict[tuple[str, int], dict] = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      by_key[(record.pop("split"), record["step"])] = record
  history: History = {}
  for (split, _), record in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    history.setdefault(split, []).append(record)
  return history


def plot_history(history: History, path: str, *, title: str = "") -> str:
  """Saves curves of two metrics against step (train records as lines, eval as dots) as a PNG
  at `path`: the loss (else the first train metric) and the first other eval metric (e.g.
  accuracy; else the second train metric). Ensemble records show each member thinly and their
  mean on top."""
  # A bare Figure (no pyplot): works headless and leaves the user's backend alone.
  fig = Figure(figsize=(10, 4))
  axes = fig.subplots(1, 2)
  for ax, metric in zip(axes, _plotted(history)):
    for split, style in (("train", "-"), ("eval", "o-")):
      records = [r for r in history.get(split, []) if metric in r]
      if not records:
        continue
      steps = [r["step"] for r in records]
      values = np.array([r[metric] for r in records], dtype=np.float64)
      if values.ndim == 2:  # one column per ensemble member: thin lines, mean on top
        lines = ax.plot(steps, values, "-", linewidth=0.6, alpha=0.4)
        values = values.mean(axis=1)
        split = f"{split} (mean of {len(lines)})"
      ax.plot(steps, values, style, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def _plotted(history: History) -> list[str]:
  """The two metrics `plot_history` draws."""
  skip = {"step", *RUN_FIGURES}
  train = [k for r in history.get("train", [])[-1:] for k in r if k not in skip]
  evals = [k for r in history.get("eval", [])[-1:] for k in r if k not in skip]
  first = "loss" if "loss" in train + evals else (train + evals + ["loss"])[0]
  rest = [k for k in evals + train if k != first]
  return [first, rest[0] if rest else first]
