#!/usr/bin/env bash
# Train / sample / evaluate on one machine: all local GPUs (or the CPU) in one process.
#
#   launch/local.sh CONFIG WORKDIR [MODE] [extra flags...]
#   launch/local.sh configs/cifar10.py /data/runs/cifar10            # train
#   launch/local.sh configs/cifar10.py /data/runs/cifar10 sample     # guided samples
#   launch/local.sh configs/digits.py workdir/digits train --config.train.batch_size=64
#
# JAX sees every local GPU (restrict with CUDA_VISIBLE_DEVICES); the mesh's data axis spans
# them. Outputs (checkpoints, metrics.jsonl, TensorBoard events, PNG grids, samples.npz)
# go to WORKDIR. Re-running the same command resumes from the last checkpoint.
#
# Optional: CPU_DEVICES=N fakes N CPU devices (to try the sharded path without GPUs).
set -euo pipefail

die() { echo "launch/local.sh: $*" >&2; exit 2; }
[[ $# -ge 2 ]] || die "usage: launch/local.sh CONFIG WORKDIR [train|sample|eval] [flags...]"
CONFIG="$1"; WORKDIR="$2"; shift 2
MODE="train"
if [[ $# -ge 1 && "$1" != --* ]]; then MODE="$1"; shift; fi
case "$MODE" in train|sample|eval) ;; *) die "MODE must be train, sample or eval, got '$MODE'";; esac
[[ -f "${CONFIG%%:*}" ]] || die "config file '${CONFIG%%:*}' not found"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found (set PYTHON=...)"
"$PYTHON" -c "import gandance_jax" 2>/dev/null \
  || die "gandance_jax is not importable by $PYTHON; run: pip install -e ."

if [[ -n "${CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi
mkdir -p "$WORKDIR"
exec "$PYTHON" -m gandance_jax.main --config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE" "$@"
