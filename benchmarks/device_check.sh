#!/usr/bin/env bash
# The accelerator check of benchmarks/device_check.py in one command (see its docstring).
#
#   benchmarks/device_check.sh                       # GPU/TPU: JSON + a table in RESULTS.md
#   benchmarks/device_check.sh --smoke --out=/tmp/dc.json   # every path on the CPU
#   benchmarks/device_check.sh --out=$OUT/dc.json --results_md=$OUT/RESULTS.md --budget_s=400
#
# Runs with the Python that has the machine's JAX (PYTHON, default python3). Needs jax,
# flax, optax, orbax-checkpoint, numpy, scipy, absl-py and ml_collections; not clu,
# tensorflow or tensorflow-datasets. Accelerator images often lack ml_collections (and
# PyYAML / absl-py, which it imports): without network, this script installs the missing
# ones from wheels in the git-ignored folder .whl/ at the repository root into .whl/site
# (put on PYTHONPATH; the machine's own environment is left unchanged). Fill .whl/
# beforehand on a machine with network, for the target's Python (X.Y = its
# `python3 --version`) and platform:
#
#   pip download --only-binary=:all: --no-deps -d .whl --python-version X.Y \
#       --platform manylinux2014_x86_64 ml_collections PyYAML absl-py
#
# and carry .whl/ to the machine with the checkout (it is ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [[ -d .whl/site ]]; then   # installed by an earlier run
  export PYTHONPATH=".whl/site${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=()
"$PY" -c "import ml_collections" 2>/dev/null || missing+=(ml_collections)
"$PY" -c "import yaml" 2>/dev/null || missing+=(PyYAML)
"$PY" -c "import absl" 2>/dev/null || missing+=(absl-py)
if ((${#missing[@]})); then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: ${missing[*]} not importable by $PY and no wheels in .whl/ (see the" \
         "comment at the top of $0 for the pip download command)" >&2
    exit 2
  fi
  echo "[device_check] installing ${missing[*]} from .whl/ into .whl/site" >&2
  "$PY" -m pip install --quiet --no-index --no-deps --find-links .whl --target .whl/site \
      "${missing[@]}"
  [[ ":$PYTHONPATH:" == *":.whl/site:"* ]] || export PYTHONPATH=".whl/site${PYTHONPATH:+:$PYTHONPATH}"
fi

has_results_md=0
for arg in "$@"; do
  case "$arg" in --smoke|--results_md=*) has_results_md=1 ;; esac
done
if ((has_results_md)); then
  exec "$PY" benchmarks/device_check.py "$@"
fi
exec "$PY" benchmarks/device_check.py --results_md=benchmarks/RESULTS.md "$@"
