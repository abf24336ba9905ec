import functools
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image
from tiny_export import exported_cnn, exported_two_inputs, two_input_arrays

import dl
from dl.deploy import export, input_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _predict_cli(*args):
  """Runs `python -m dl.cli.predict` in a fresh process, as a user would."""
  return subprocess.run(
    [sys.executable, "-m", "dl.cli.predict", *args],
    check=False,
    capture_output=True,
    text=True,
    cwd=REPO,
  )


def test_cli_predicts_and_writes_csv(tmp_path):
  task, state, _, directory = exported_cnn()
  images = dl.data.load("digits", "test")["image"][:20]
  np.save(tmp_path / "x.npy", images)
  out = tmp_path / "probs.csv"
  result = _predict_cli(
    "--model", directory, "--input", str(tmp_path / "x.npy"), "--output", str(out)
  )
  assert result.returncode == 0, result.stderr
  rows = out.read_text().splitlines()
  assert rows[0] == "predicted," + ",".join(str(i) for i in range(10))
  expected = dl.predict(task, state, images)
  assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in expected.argmax(1)]
  np.testing.assert_allclose(
    [[float(v) for v in r.split(",")[1:]] for r in rows[1:]], expected, atol=1e-7
  )


# The CLI on each bad input, all run in one subprocess (start-up dominates): (argv, message).
_BAD_INPUTS = {
  "missing_file": (["--input", "{tmp}/nothing.npy"], r"input file .*nothing.npy' does not exist"),
  "wrong_shape": (["--input", "{tmp}/big.npy"], r"shape \(batch, 8, 8, 1\); got \(4, 28, 28, 1\)"),
  "wrong_dtype": (["--input", "{tmp}/float.npy"], "must have dtype uint8 .*; got float64"),
  "wrong_format": (
    ["--input", "{tmp}/x.txt"],
    "input must be one of .npz, .npy, .csv, .png; got '.txt'",
  ),
  "npz_names": (["--input", "{tmp}/named.npz"], r"must have keys \['input'\]; got \['image'\]"),
  "two_inputs_npy": (
    ["--model", "{two_inputs}", "--input", "{tmp}/big.npy"],
    r"takes inputs \['user', 'item'\]: pass a .npz file with one array per name; got '.npy'",
  ),
  "csv_columns": (["--input", "{tmp}/x.csv"], r"expected 64 columns .*; got 3"),
  "png_size": (
    ["--input", "{tmp}/big.png"],
    r"expected a 8x8 image with 1 channel\(s\); got 28x28",
  ),
  "not_an_export": (["--model", "{tmp}", "--input", "{tmp}/big.npy"], "is not a dl export"),
}
_DRIVER = """
import contextlib, io, json, runpy, sys
results = {}
for case, argv in json.loads(sys.argv[1]).items():
  sys.argv = ["dl.cli.predict", *argv]
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      runpy.run_module("dl.cli.predict", run_name="__main__")
      code = 0
    except SystemExit as e:
      code = e.code
  results[case] = [code, err.getvalue()]
print(json.dumps(results))
"""


@functools.cache
def _bad_input_results() -> dict:
  """{case: [exit status, stderr]} of `python -m dl.cli.predict` on each bad input."""
  *_, directory = exported_cnn()
  *_, two_inputs = exported_two_inputs()
  tmp = tempfile.mkdtemp(prefix="dl_predict_test_")
  images = dl.data.load("digits", "test")["image"][:4]
  np.savez(f"{tmp}/named.npz", image=images)
  np.save(f"{tmp}/big.npy", np.zeros((4, 28, 28, 1), np.uint8))
  np.save(f"{tmp}/float.npy", images.astype(np.float64))
  with open(f"{tmp}/x.txt", "w") as f:
    f.write("1 2 3")
  with open(f"{tmp}/x.csv", "w") as f:
    f.write("1,2,3\n4,5,6\n")
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(f"{tmp}/big.png")
  argvs = {
    case: ["--model", directory, *(a.format(tmp=tmp, two_inputs=two_inputs) for a in argv)]
    for case, (argv, _) in _BAD_INPUTS.items()
  }
  result = subprocess.run(
    [sys.executable, "-c", _DRIVER, json.dumps(argvs)],
    capture_output=True,
    text=True,
    cwd=REPO,
    check=True,
  )
  return json.loads(result.stdout.splitlines()[-1])


def test_cli_predicts_for_a_model_with_two_inputs(tmp_path):
  task, state, _, directory = exported_two_inputs()
  pairs = two_input_arrays(10, seed=4)
  inputs = {"user": pairs["user"], "item": pairs["item"]}
  np.savez(tmp_path / "x.npz", **inputs)
  result = _predict_cli("--model", directory, "--input", str(tmp_path / "x.npz"), "--drift")
  assert result.returncode == 0, result.stderr
  rows = result.stdout.splitlines()[:11]
  assert rows[0] == "index,prediction"
  assert "of 16 embeddings drifted (10 examples" in result.stdout  # the drift report
  expected = dl.predict(task, state, inputs)
  np.testing.assert_allclose([float(r.split(",")[1]) for r in rows[1:]], expected, rtol=1e-5)


@pytest.mark.parametrize("case", list(_BAD_INPUTS))
def test_cli_bad_input_is_a_clear_error(case):
  code, stderr = _bad_input_results()[case]
  assert code == 2, stderr
  assert "Traceback" not in stderr
  assert stderr.startswith("dl.cli.predict: error: ")
  assert re.search(_BAD_INPUTS[case][1], stderr), stderr


def test_read_inputs_png_and_csv(tmp_path):
  *_, directory = exported_cnn()
  spec = export.load(directory).spec
  images = dl.data.load("digits", "test")["image"][:3]
  Image.fromarray(images[0, ..., 0]).save(tmp_path / "x.png")
  np.testing.assert_array_equal(input_spec.read_inputs(str(tmp_path / "x.png"), spec), images[:1])
  header = ",".join(f"p{i}" for i in range(64))
  rows = "\n".join(",".join(map(str, im.ravel())) for im in images)
  (tmp_path / "x.csv").write_text(f"{header}\n{rows}\n")
  np.testing.assert_array_equal(input_spec.read_inputs(str(tmp_path / "x.csv"), spec), images)
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "big.png")
  with pytest.raises(ValueError, match=r"expected a 8x8 image with 1 channel\(s\); got 28x28"):
    input_spec.read_inputs(str(tmp_path / "big.png"), spec)
  (tmp_path / "neg.csv").write_text(",".join(["-1"] * 64))
  with pytest.raises(ValueError, match=r"whole numbers in \[0, 255\] \(uint8\); got values in"):
    input_spec.read_inputs(str(tmp_path / "neg.csv"), spec)
