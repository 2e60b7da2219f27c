#!/usr/bin/env bash
# The README demo (`make demo`): shard the sample text shipped in data_pipeline/samples, train the
# tiny preset on CPU for a few minutes, evaluate validation BPB, and show where the TensorBoard
# logs are. Under 10 minutes on 2 CPU cores.
#
#   bash launchers/demo.sh [section.key=value ...]     (overrides go to the training run)
#
# Data: runs/demo-data (kept between demos); run: runs/demo (replaced by each demo); another
# folder than runs/ with PMNET_DEMO_DIR. The rendezvous port is a free one the launcher picks
# (MASTER_PORT=P to give one).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PMNET_PYTHON:-python}"
export PMNET_PYTHON="$PY"
DIR="${PMNET_DEMO_DIR:-runs}"
DATA="$DIR/demo-data"
RUN="$DIR/demo"
START=$(date +%s)

echo "== 1/3 shard the shipped sample text into $DATA"
if [[ -f "$DATA/manifest.json" && -f "$DATA/train/index.json" && -f "$DATA/val/index.json" ]]; then
    echo "already sharded ($DATA/manifest.json); delete $DATA to redo"
else
    "$PY" tools/shard_dataset.py data_pipeline/samples --out "$DATA" \
        --sample-bytes 513 --val-fraction 0.09 --no-progress
fi

echo "== 2/3 train the tiny preset on CPU (configs/demo.yaml)"
rm -rf "$RUN"
bash launchers/pretrain.sh configs/demo.yaml --cpu-ranks 1 train.run_root="$DIR" \
    "data.streams=[{local: '$DATA', split: train}]" "data.val_streams=[{local: '$DATA', split: val}]" "$@"

echo "== 3/3 evaluate (validation BPB; BPB by position on a shipped book; a PNG of both)"
BPB=$(grep -o 'eval at step [0-9]*: val bpb [0-9.]*' "$RUN/train.log" | tail -1 || true)
FIRST=$(grep -o 'eval at step [0-9]*: val bpb [0-9.]*' "$RUN/train.log" | head -1 || true)
echo "validation (held-out documents): ${FIRST:-?}  ->  ${BPB:-?}"
echo "(a byte-uniform model scores 8 bits per byte; the tiny model learns the byte statistics)"
"$PY" -m pmnet.eval.report "$RUN" --books data_pipeline/books --max-bytes 16384 2>&1 | grep -v -i warn
echo
echo "done in $(( $(date +%s) - START )) s."
echo "run directory:    $RUN (config.yaml, train.log, checkpoints/)"
echo "TensorBoard logs: $RUN/tb"
echo "open them with:   tensorboard --logdir $RUN/tb   (then http://localhost:6006)"
