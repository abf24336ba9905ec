"""The benchmark scripts run (at tiny size) and report every side; no timing is asserted."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quick_rows(script: str, first_key: str) -> list[dict]:
  out = subprocess.run(
    [sys.executable, os.path.join(REPO, "benchmarks", script), "--quick"],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO,
  )
  return [
    json.loads(line) for line in out.stdout.splitlines() if line.startswith(f'{{"{first_key}"')
  ]


def test_train_throughput_quick_reports_both_sides():
  rows = _quick_rows("train_throughput.py", "benchmark")
  assert len(rows) == 3  # CNN one step per dispatch, CNN 10 unrolled steps, fused MLP
  for row in rows:
    assert row["dl_examples_per_sec"] > 0 and row["handwritten_examples_per_sec"] > 0
    ratio = row["dl_examples_per_sec"] / row["handwritten_examples_per_sec"]
    assert abs(row["ratio"] - ratio) < 1e-2


def test_ensemble_throughput_quick_reports_all_ways():
  rows = _quick_rows("ensemble_throughput.py", "batch_size")
  assert [row["batch_size"] for row in rows] == [16, 128]
  for row in rows:
    assert row["sequential_examples_per_sec"] > 0 and row["vmap_examples_per_sec"] > 0
    assert set(row["wall_s"]) == {"sequential", "vmap", "vmap_fused"}


def test_lm_throughput_quick_reports_training_and_both_samplers():
  rows = _quick_rows("lm_throughput.py", "measure")
  assert [row["measure"].split(" (")[0] for row in rows] == [
    "train",
    "sample with KV cache",
    "sample no cache",
    "decoder_lm train, dl.fit",
    "decoder_lm train, hand-written jit",
  ]
  assert all(row["tokens_per_sec"] > 0 for row in rows)
  for row in rows[3:]:
    assert row["tflops_per_sec_per_device"] > 0 and row["mfu"] > 0


def test_checkpoint_overhead_quick_reports_sync_and_async_percentiles():
  rows = _quick_rows("checkpoint_overhead.py", "saves")
  assert [row["saves"] for row in rows] == ["sync", "async"]
  for row in rows:
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["after_save_ms"] > 0 and row["wall_s"] > 0
