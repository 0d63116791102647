#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (v4/v5e/v5p pods): same command on every worker.
#
#   TPU_NAME=gandance-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#   WORKDIR=gs://my-bucket/runs/in64 launch/tpu_pod.sh configs/imagenet64.py [flags...]
#
# Steps: (1) create the slice if it does not exist (RUNTIME defaults to tpu-ubuntu2204-base;
# set PREEMPTIBLE=1 for a spot slice), (2) copy this checkout to every worker and install it
# with jax[tpu], (3) run the trainer on all workers at once; jax.distributed.initialize()
# discovers the slice itself. WORKDIR on GCS holds checkpoints/metrics so a preempted slice
# resumes: rerun the same command (set RECREATE=1 to delete and recreate a preempted spot
# slice first). Data: tfds datasets are read from TFDS_DATA_DIR (e.g. gs://bucket/tfds).
set -euo pipefail

die() { echo "launch/tpu_pod.sh: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: TPU_NAME=... ZONE=... ACCELERATOR=... WORKDIR=gs://... launch/tpu_pod.sh CONFIG [flags]"
CONFIG="$1"; shift
for v in TPU_NAME ZONE ACCELERATOR WORKDIR; do
  [[ -n "${!v:-}" ]] || die "set $v (see the header of this script)"
done
[[ "$WORKDIR" == gs://* ]] || die "WORKDIR must be a gs:// bucket path every worker can reach, got '$WORKDIR'"
[[ -f "${CONFIG%%:*}" ]] || die "config file '${CONFIG%%:*}' not found"
command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud SDK"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
PROJECT_FLAG=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAG=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm "${PROJECT_FLAG[@]}")

state="$("${TPU[@]}" describe "$TPU_NAME" --zone="$ZONE" --format='value(state)' 2>/dev/null || true)"
if [[ -n "$state" && "${RECREATE:-0}" == 1 && "$state" != READY ]]; then
  echo "slice $TPU_NAME is $state: recreating"
  "${TPU[@]}" delete "$TPU_NAME" --zone="$ZONE" --quiet
  state=""
fi
if [[ -z "$state" ]]; then
  extra=()
  [[ "${PREEMPTIBLE:-0}" == 1 ]] && extra+=(--spot)
  "${TPU[@]}" create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" "${extra[@]}"
elif [[ "$state" != READY ]]; then
  die "slice $TPU_NAME is in state $state (set RECREATE=1 to recreate it)"
fi

# Ship this checkout (tracked files only) to every worker and install it.
ARCHIVE="$(mktemp -t gandance-XXXX.tar.gz)"
git archive --format=tar.gz -o "$ARCHIVE" HEAD
"${TPU[@]}" scp "$ARCHIVE" "$TPU_NAME":~/gandance_jax.tar.gz --zone="$ZONE" --worker=all
"${TPU[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e; rm -rf ~/gandance_jax && mkdir -p ~/gandance_jax && tar xzf ~/gandance_jax.tar.gz -C ~/gandance_jax
  cd ~/gandance_jax && python3 -m pip install -q -e '.[tpu]'"

# Quote the user's extra flags for the remote shell.
FLAGS=""
for a in "$@"; do FLAGS+=" $(printf '%q' "$a")"; done
"${TPU[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd ~/gandance_jax && GANDANCE_DISTRIBUTED=1 TFDS_DATA_DIR=${TFDS_DATA_DIR:-} \
  python3 -m gandance_jax.main --config=$(printf '%q' "$CONFIG") \
      --workdir=$(printf '%q' "$WORKDIR") --mode=train $FLAGS"
