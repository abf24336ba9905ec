"""Predictions from an exported model on the command line.

python -m dl.cli.predict --model exports/digits --input digits.npy [--output probs.csv] [--drift]

`--input` is a `.npy` batch, a `.csv` of one example per row, or a `.png` image; bad input
(missing file, wrong shape or dtype) exits with status 2 and a message naming what was
expected and what came.
"""

import argparse
import json
import sys

import numpy as np

from dl import export, monitor


def main(argv: list[str] | None = None) -> int:
  """Parses flags, predicts, prints or writes; returns the exit status."""
  args = _parser().parse_args(argv)
  try:
    model = export.load(args.model)
    inputs = export.read_inputs(args.input, model.spec)
    probs = model(inputs)
    report = None
    if args.drift:
      thresholds = monitor.Thresholds(
        psi=args.psi, ks_pvalue=args.ks_pvalue, mmd_pvalue=args.mmd_pvalue
      )
      report = model.check_drift(inputs, thresholds)
  except (FileNotFoundError, ValueError) as e:
    print(f"dl.predict: error: {e}", file=sys.stderr)
    return 2
  if args.output:
    _write(args.output, probs, model.class_names)
  else:
    _print(probs, model.class_names)
  if report is not None:
    print(report)
  return 0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m dl.cli.predict", description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="an export directory (dl.export.export)")
  parser.add_argument("--input", required=True, help="a .npy, .csv or .png file")
  parser.add_argument("--output", help="write probabilities to .npy, .csv or .json")
  parser.add_argument("--drift", action="store_true", help="also check the batch for drift")
  parser.add_argument("--psi", type=float, default=monitor.Thresholds.psi)
  parser.add_argument("--ks_pvalue", type=float, default=monitor.Thresholds.ks_pvalue)
  parser.add_argument("--mmd_pvalue", type=float, default=monitor.Thresholds.mmd_pvalue)
  return parser


def _print(probs: np.ndarray, class_names: list[str]) -> None:
  print("index,predicted,probability")
  for i, row in enumerate(probs):
    print(f"{i},{class_names[row.argmax()]},{row.max():.4f}")


def _write(path: str, probs: np.ndarray, class_names: list[str]) -> None:
  predicted = [class_names[i] for i in probs.argmax(axis=1)]
  if path.endswith(".npy"):
    np.save(path, probs)
  elif path.endswith(".json"):
    rows = [{"predicted": p, "probabilities": r.tolist()} for p, r in zip(predicted, probs)]
    with open(path, "w") as f:
      json.dump(rows, f)
  else:
    with open(path, "w") as f:
      f.write(",".join(["predicted", *class_names]) + "\n")
      f.writelines(
        ",".join([p, *(f"{v:.8g}" for v in row)]) + "\n" for p, row in zip(predicted, probs)
      )
  print(f"wrote {len(probs)} predictions to {path}")


if __name__ == "__main__":
  sys.exit(main())
