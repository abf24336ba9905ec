"""Predictions from an exported model on the command line.

python -m dl.cli.predict --model exports/digits --input digits.npy [--output probs.csv] [--drift]

`--input` is a `.npz` with one array per input name (any model, and the form for models with
several inputs), or for a model with one input a `.npy` batch, a `.csv` of one example per
row or a `.png` image. A classifier's predictions are printed as the predicted class and its
probability; other models' as their values. Bad input (missing file, wrong names, shape or
dtype) exits with status 2 and a message naming what was expected and what came.
"""

import argparse
import json
import sys

import numpy as np

from dl.deploy import export, input_spec, monitor


def main(argv: list[str] | None = None) -> int:
  """Parses flags, predicts, prints or writes; returns the exit status."""
  args = _parser().parse_args(argv)
  try:
    model = export.load(args.model)
    inputs = input_spec.read_inputs(args.input, model.spec)
    predictions = model(inputs)
    report = None
    if args.drift:
      thresholds = monitor.Thresholds(
        psi=args.psi, ks_pvalue=args.ks_pvalue, mmd_pvalue=args.mmd_pvalue
      )
      report = model.check_drift(inputs, thresholds)
  except (FileNotFoundError, ValueError) as e:
    print(f"dl.cli.predict: error: {e}", file=sys.stderr)
    return 2
  if args.output:
    _write(args.output, predictions, model.class_names)
  else:
    _print(predictions, model.class_names)
  if report is not None:
    print(report)
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m dl.cli.predict", description=__doc__.split("\n")[0]
  )
  parser.add_argument(
    "--model", required=True, help="an export directory (dl.deploy.export.export)"
  )
  parser.add_argument("--input", required=True, help="a .npz, .npy, .csv or .png file")
  parser.add_argument("--output", help="write predictions to .npy, .csv or .json")
  parser.add_argument("--drift", action="store_true", help="also check the batch for drift")
  parser.add_argument("--psi", type=float, default=monitor.Thresholds.psi)
  parser.add_argument("--ks_pvalue", type=float, default=monitor.Thresholds.ks_pvalue)
  parser.add_argument("--mmd_pvalue", type=float, default=monitor.Thresholds.mmd_pvalue)
  return parser


def _columns(predictions: np.ndarray) -> list[str]:
  """Column names of a model's predictions that are not class probabilities."""
  width = int(np.prod(predictions.shape[1:]))
  return ["prediction"] if predictions.ndim == 1 else [f"output_{i}" for i in range(width)]


def _print(predictions: np.ndarray, class_names: list[str]) -> None:
  if class_names:
    print("index,predicted,probability")
    for i, row in enumerate(predictions):
      print(f"{i},{class_names[row.argmax()]},{row.max():.4f}")
    return
  print(",".join(["index", *_columns(predictions)]))
  for i, row in enumerate(predictions.reshape(len(predictions), -1)):
    print(",".join([str(i), *(f"{v:.6g}" for v in row)]))


def _write(path: str, predictions: np.ndarray, class_names: list[str]) -> None:
  if path.endswith(".npy"):
    np.save(path, predictions)
  elif class_names:
    predicted = [class_names[i] for i in predictions.argmax(axis=1)]
    rows = zip(predicted, predictions)
    if path.endswith(".json"):
      _write_json(path, [{"predicted": p, "probabilities": r.tolist()} for p, r in rows])
    else:
      _write_csv(
        path, ["predicted", *class_names], ([p, *(f"{v:.8g}" for v in r)] for p, r in rows)
      )
  elif path.endswith(".json"):
    _write_json(path, [{"prediction": r.tolist()} for r in predictions])
  else:
    flat = predictions.reshape(len(predictions), -1)
    _write_csv(path, _columns(predictions), ([f"{v:.8g}" for v in r] for r in flat))
  print(f"wrote {len(predictions)} predictions to {path}")


def _write_json(path: str, rows: list) -> None:
  with open(path, "w") as f:
    json.dump(rows, f)


def _write_csv(path: str, header: list[str], rows) -> None:
  with open(path, "w") as f:
    f.write(",".join(header) + "\n")
    f.writelines(",".join(row) + "\n" for row in rows)


if __name__ == "__main__":
  sys.exit(main())
