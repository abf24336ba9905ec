"""Evaluation metrics per group (slice) of a data set, and the gaps between groups.

Per group: accuracy, and for binary tasks (positive class = 1) the true and false positive
rates and the selection rate (share predicted positive). Across groups: the demographic
parity difference (largest gap in selection rate) and the equalized odds difference
(largest gap in TPR or FPR), as fairlearn defines them.

Exact over padded batches and sharded data: a jitted function sums counts per group (like
`dl.inference.eval_step`, sums, never means), and rates are divided out on the host at the end.
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dl import inference
from dl.core import parallel
from dl.data.transforms import GROUP_KEY
from dl.models.adapters import Model, as_model
from dl.training import protocols

# The record keys of the gaps between groups, beside the per-group "<metric>/group=<name>" keys.
DEMOGRAPHIC_PARITY_KEY = "demographic_parity_difference"
EQUALIZED_ODDS_KEY = "equalized_odds_difference"
GAP_KEYS = (DEMOGRAPHIC_PARITY_KEY, EQUALIZED_ODDS_KEY)
_COLUMNS = ("count", "accuracy", "tpr", "fpr", "selection_rate")


def group_sums(
  logits_BxC: jax.Array,
  labels_B: jax.Array,
  groups_B: jax.Array,
  mask_B: jax.Array,
  num_groups: int,
) -> dict[str, jax.Array]:
  """Counts per group over the unmasked examples of one batch.

  Args:
    logits_BxC: model outputs.
    labels_B: integer labels.
    groups_B: integer group ids in [0, num_groups).
    mask_B: 1.0 for real examples, 0.0 for padding.
    num_groups: G.

  Returns:
    {"count", "correct"} of shape (G,); binary tasks (C == 2) also "positive" (label 1),
    "predicted" (predicted 1), "true_positive" and "false_positive".
  """
  onehot_BxG = jax.nn.one_hot(groups_B, num_groups) * mask_B[:, None]
  predicted_B = jnp.argmax(logits_BxC, -1)
  per_example = {
    "count": jnp.ones_like(mask_B),
    "correct": (predicted_B == labels_B).astype(jnp.float32),
  }
  if logits_BxC.shape[-1] == 2:
    pred_B, label_B = (predicted_B == 1), (labels_B == 1)
    per_example |= {
      "positive": label_B.astype(jnp.float32),
      "predicted": pred_B.astype(jnp.float32),
      "true_positive": (pred_B & label_B).astype(jnp.float32),
      "false_positive": (pred_B & ~label_B).astype(jnp.float32),
    }
  return {k: jnp.einsum("bg,b->g", onehot_BxG, v_B) for k, v_B in per_example.items()}


def group_eval_step(
  state: Any, batch: dict[str, jax.Array], *, model: Model, num_groups: int
) -> dict[str, jax.Array]:
  """`group_sums` of the model's predictions on `batch` (its inputs, "label", "group", "mask"?)."""
  logits_BxC, _ = model.apply(state.params, state.model_state, batch, train=False)
  mask_B = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
  return group_sums(logits_BxC, batch["label"], batch[GROUP_KEY], mask_B, num_groups)


def metrics_from_sums(sums: Mapping[str, np.ndarray], group_names: Sequence[str]) -> dict[str, Any]:
  """Rates per group and the gaps between groups, from summed counts.

  Args:
    sums: `group_sums` totals, each (G,), or (M, G) for an ensemble of M members.
    group_names: G names, used in the keys.

  Returns:
    {"accuracy/group=<name>", "count/group=<name>"} and, for binary tasks, "tpr/...",
    "fpr/...", "selection_rate/..." per group, plus "demographic_parity_difference" and
    "equalized_odds_difference". Floats (lists of M floats for an ensemble); a rate with no
    examples to divide by is NaN and is left out of the gaps.
  """
  s = {k: np.asarray(v, np.float64) for k, v in sums.items()}
  if s["count"].shape[-1] != len(group_names):
    raise ValueError(
      f"expected {s['count'].shape[-1]} group names (one per group); got {len(group_names)}."
    )
  rates = {"accuracy": _ratio(s["correct"], s["count"])}
  if "positive" in s:
    rates["tpr"] = _ratio(s["true_positive"], s["positive"])
    rates["fpr"] = _ratio(s["false_positive"], s["count"] - s["positive"])
    rates["selection_rate"] = _ratio(s["predicted"], s["count"])
  out = {}
  for i, name in enumerate(group_names):
    out[f"count/group={name}"] = s["count"][..., i]
    out |= {f"{metric}/group={name}": values[..., i] for metric, values in rates.items()}
  if "positive" in s:
    out[DEMOGRAPHIC_PARITY_KEY] = _gap(rates["selection_rate"])
    out[EQUALIZED_ODDS_KEY] = np.maximum(_gap(rates["tpr"]), _gap(rates["fpr"]))
  return {k: _to_python(v) for k, v in out.items()}


def evaluate_groups(
  state: Any,
  model: Any,
  arrays: dict[str, np.ndarray],
  group_names: Sequence[str],
  batch_size: int = inference.EVAL_BATCH_SIZE,
) -> dict[str, Any]:
  """Per-group metrics of `state` on all of `arrays` (exact: padding is masked).

  Args:
    state: a state whose params fit `model`; an ensemble's stacked state (leading member
      axis) is evaluated member by member in one vmapped program. On a mesh, batches are
      split over it (as in `dl.evaluate`).
    model: a `dl.Linen`/`dl.NNX` model or a Linen module.
    arrays: the model's inputs, "label" (N,) and "group" (N,) ints in [0, G), preprocessed.
    group_names: the G group names.
    batch_size: examples per compiled call.

  Returns:
    `metrics_from_sums` of the whole of `arrays`.
  """
  groups = np.asarray(arrays[GROUP_KEY])
  if groups.size and not 0 <= groups.min() <= groups.max() < len(group_names):
    raise ValueError(
      f"group ids must lie in [0, {len(group_names)}) (one per name); got "
      f"[{groups.min()}, {groups.max()}]."
    )
  step = _jitted_group_step(as_model(model), len(group_names), inference.is_ensemble(state))
  totals = None
  for batch in inference.eval_batches(arrays, min(batch_size, len(groups)), state):
    sums = step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return metrics_from_sums(parallel.fetch(totals), group_names)


@functools.cache
def _jitted_group_step(model: Model, num_groups: int, ensemble: bool):
  step = functools.partial(group_eval_step, model=model, num_groups=num_groups)
  return jax.jit(jax.vmap(step, in_axes=(0, None)) if ensemble else step)


class SliceMetrics(protocols.Hook):
  """Adds per-group metrics (`evaluate_groups`) to every evaluation of a task.

  Args:
    task: a `dl.Task` whose eval and test arrays carry "group" ids.
    group_names: the G group names.
    batch_size: examples per compiled call.
  """

  def __init__(
    self, task: Any, group_names: Sequence[str], batch_size: int = inference.EVAL_BATCH_SIZE
  ):
    self.task, self.group_names, self.batch_size = task, tuple(group_names), batch_size

  def on_eval(self, state: Any, step: int, split: str) -> dict[str, Any]:
    del step
    arrays = {"eval": self.task.eval, "test": self.task.test}[split]
    if not isinstance(arrays, Mapping) or GROUP_KEY not in arrays:  # none, or a stream
      return {}
    return evaluate_groups(state, self.task.model, arrays, self.group_names, self.batch_size)


def is_slice_key(key: str) -> bool:
  """Whether a record key is one `metrics_from_sums` writes: per group, or a gap (`GAP_KEYS`)."""
  return "/group=" in key or key in GAP_KEYS


def format_table(metrics: Mapping[str, Any]) -> str:
  """A markdown table, one row per group, of a `metrics_from_sums` (or eval) record.

  Ensemble records (lists) show the mean over members.
  """
  groups = [k.split("/group=", 1)[1] for k in metrics if k.startswith("count/group=")]
  if not groups:
    raise ValueError(
      f"expected per-group keys such as 'count/group=<name>'; got {sorted(metrics)}."
    )
  columns = [c for c in _COLUMNS if f"{c}/group={groups[0]}" in metrics]
  lines = ["| group | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for g in groups:
    cells = [_cell(metrics[f"{c}/group={g}"], c == "count") for c in columns]
    lines.append(f"| {g} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _cell(value: Any, integer: bool) -> str:
  value = float(np.mean(value))
  return f"{value:.0f}" if integer else f"{value:.4f}"


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, NaN where the denominator is 0."""
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def _gap(rates: np.ndarray) -> np.ndarray:
  """Largest minus smallest rate over groups (last axis), ignoring NaN (0 if < 2 defined)."""
  defined = ~np.isnan(rates)
  hi = np.max(np.where(defined, rates, -np.inf), axis=-1)
  lo = np.min(np.where(defined, rates, np.inf), axis=-1)
  return np.where(defined.sum(-1) >= 2, hi - lo, 0.0)


def _to_python(values: np.ndarray) -> float | list[float]:
  """One float for a single model, a list of floats for an ensemble."""
  return float(values) if np.ndim(values) == 0 else [float(v) for v in values]
