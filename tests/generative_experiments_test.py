"""A tiny run of each generative study script (they have no `get_config`)."""

import importlib.util
import pathlib
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"
SCRIPTS = ("gan_mnist5k", "vae_mnist5k", "anomaly_mnist5k", "translate_digits")


@pytest.mark.parametrize("name", SCRIPTS)
def test_study_runs_tiny(name, tmp_path, monkeypatch):
  spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setattr(sys, "argv", [f"{name}.py", "--workdir", str(tmp_path), "--tiny"])
  module.main()
  results = (tmp_path / "results.md").read_text()
  assert "|---|" in results and "nan" not in results
  assert list(tmp_path.rglob("*.png")) or name == "anomaly_mnist5k"
