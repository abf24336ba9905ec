"""A tiny run of each generative study script (they have no `get_config`)."""

import importlib.util
import pathlib
import re
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"
SCRIPTS = ("gan_mnist5k", "vae_mnist5k", "anomaly_mnist5k", "translate_digits")


@pytest.mark.parametrize("name", SCRIPTS)
def test_study_runs_tiny_through_the_one_loop(name, tmp_path, monkeypatch):
  path = EXPERIMENTS / f"{name}.py"
  # Studies train with dl.fit; a step or an optimizer update of their own is a second loop.
  assert not re.search(r"\btrain_step\b|apply_updates", path.read_text())
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setattr(sys, "argv", [f"{name}.py", "--workdir", str(tmp_path), "--tiny"])
  module.main()
  results = (tmp_path / "results.md").read_text()
  assert "|---|" in results and "nan" not in results
  assert list(tmp_path.rglob("*.png")) or name == "anomaly_mnist5k"
  assert list(tmp_path.rglob("checkpoints")) and list(tmp_path.rglob("metrics.jsonl"))
