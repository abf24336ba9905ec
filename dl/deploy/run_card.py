"""The run card: the machine-readable record of what a model was trained on, how, and how well.

`run_card(task, state, workdir=...)` gathers the config, fit settings and seeds, the sizes and
sha256 fingerprints of the model-ready arrays, validation and test metrics, slice metrics,
the privacy budget and library versions; `dl.deploy.export` writes it as `run_card.json`.
"""

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np

from dl import inference
from dl.trust import fairness, privacy

CARD_FILE = "run_card.json"
_VERSIONED = ("dl", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy")


def run_card(task, state, *, workdir: str | None = None) -> dict[str, Any]:
  """The machine-readable record of what was trained on what, and how well.

  Args:
    task: a `dl.Task`; its `config` (the config's fields; {} for user parts) is recorded.
    state: the trained state.
    workdir: the run's workdir: `fit_config.json` (written by `dl.fit`: seed, steps, batch
      size...) and `metrics.jsonl` supply the fit settings and the metrics when present.

  Returns:
    {"created", "name", "config", "fit_config", "data" (sizes and sha256 fingerprints of
    the model-ready arrays), "seeds", "step", "metrics" ({"validation": last "eval" record,
    "test": the "test" record}), "slice_metrics" (the same, per-group keys and gaps from
    `dl.trust.fairness.SliceMetrics`), "privacy" (budget spent and DP-SGD settings), "versions"}.
  """
  config = dict(task.config)
  fit_config = {}
  if workdir and os.path.exists(os.path.join(workdir, "fit_config.json")):
    with open(os.path.join(workdir, "fit_config.json")) as f:
      fit_config = json.load(f)
  metrics_path = os.path.join(workdir, "metrics.jsonl") if workdir else ""
  if metrics_path and os.path.exists(metrics_path):
    metrics = _run_metrics(metrics_path)
  else:
    metrics = _evaluated_metrics(
      task, state, fit_config.get("eval_batch_size", inference.EVAL_BATCH_SIZE)
    )
  seed = fit_config.get("seed", config.get("fit", {}).get("seed"))
  return {
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "name": task.name,
    "config": _jsonable(config),
    "fit_config": _jsonable(fit_config),
    "data": _data_card(task, config),
    "seeds": {} if seed is None else {"seed": seed},
    "step": int(np.asarray(state.step)),
    **metrics,
    "privacy": {**metrics["privacy"], **_privacy_settings(config)},
    "versions": _versions(),
  }


def data_fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
  """sha256 over the arrays' names, dtypes, shapes and bytes, in name order."""
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
    h.update(a.tobytes())
  return "sha256:" + h.hexdigest()


def _data_card(task, config: Mapping[str, Any]) -> dict[str, Any]:
  """Sizes and fingerprints of the model-ready (preprocessed) arrays of each split."""
  card = {
    k: config[k]
    for k in ("dataset", "train_split", "validation_split", "test_split")
    if k in config
  }
  card |= {
    "num_train_examples": len(task.train),
    "fingerprint": data_fingerprint(task.train.arrays),
  }
  for split, arrays in (("validation", task.eval), ("test", task.test)):
    if arrays is not None:
      card[f"num_{split}_examples"] = inference.num_examples(arrays)
    if isinstance(arrays, Mapping):  # a split read in batches has no fingerprint
      card[f"{split}_fingerprint"] = data_fingerprint(arrays)
  return card


def _evaluated_metrics(task, state, batch_size: int) -> dict[str, dict[str, Any]]:
  """Card metrics without a workdir: `dl.evaluate` on the validation and test arrays."""
  metrics = {"source": "dl.evaluate at export"}
  for split, name in (("eval", "validation"), ("test", "test")):
    evaluated = task.evaluate(state, split, batch_size)
    if evaluated is not None:
      metrics[name] = evaluated
  return {"metrics": metrics, "slice_metrics": {}, "privacy": {}}


def _run_metrics(path: str) -> dict[str, dict[str, Any]]:
  """Card metrics from `metrics.jsonl`: the last validation record and the test record,
  each split into overall and slice metrics; the privacy budget spent."""
  from dl.core import writers

  history = writers.read_history(path)
  metrics, slices, spent = {"source": "metrics.jsonl"}, {}, {}
  for split in sorted(history):
    for record in history[split]:
      spent.update({k: v for k, v in record.items() if k in privacy.BudgetHook.KEYS})
  for split, name in (("eval", "validation"), ("test", "test")):
    if not history.get(split):
      continue
    record = {k: v for k, v in history[split][-1].items() if k not in privacy.BudgetHook.KEYS}
    sliced = {k: record.pop(k) for k in list(record) if fairness.is_slice_key(k)}
    metrics[name] = record
    if sliced:
      slices[name] = {"step": record["step"], **sliced}
  return {"metrics": metrics, "slice_metrics": slices, "privacy": spent}


def _privacy_settings(config: Mapping[str, Any]) -> dict[str, Any]:
  """DP-SGD's settings from a config that trained with it (noise multiplier > 0)."""
  if not config.get("dp_noise_multiplier"):
    return {}
  return {
    "noise_multiplier": config["dp_noise_multiplier"],
    "l2_clip": config.get("dp_l2_clip"),
    "delta": config.get("dp_delta"),
  }


def _versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for package in _VERSIONED:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def _jsonable(value):
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)
