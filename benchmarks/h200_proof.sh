#!/usr/bin/env bash
# One GPU sitting that proves the training path and runs a short copy-paste experiment:
#   1. shard the sample text shipped in the repo into 8,193-byte samples;
#   2. PMNet-119M through launchers/pretrain.sh (ZeRO-2, bf16, flex, compiled fast path,
#      8,192-byte sequences) for up to STEPS_119M steps of a global batch of 8 sequences;
#   3. benchmarks/copy_paste_experiment.sh: PMNet-30M vs the no-memory model on copy-paste,
#      each trained for CP_SECONDS seconds (SIGTERM -> checkpoint), then evaluated by N.
# Usage (GPU machine; the wheels of ../shared/gpu/README.md unpacked on PYTHONPATH):
#   bash benchmarks/h200_proof.sh OUT_DIR
# Writes OUT_DIR/results.tgz (logs, TensorBoard events, copy-paste CSV/PNG/tables) and prints
# a summary.
set -uo pipefail
OUT="${1:?usage: h200_proof.sh OUT_DIR}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PMNET_PYTHON="${PMNET_PYTHON:-python3}" PYTHONUNBUFFERED=1
STEPS_119M="${STEPS_119M:-300}"
T119="${T119:-200}"
CP_SECONDS="${CP_SECONDS:-140}"
CP_STEPS="${CP_STEPS:-3000}"
RES=/tmp/h200_results
rm -rf "$RES" /tmp/pmd /tmp/runs /tmp/cp && mkdir -p "$RES" "$OUT"
START=$(date +%s)

echo "== shard ($(( $(date +%s) - START )) s)"
"$PMNET_PYTHON" tools/shard_dataset.py data_pipeline/samples --out /tmp/pmd \
    --sample-bytes 8193 --val-fraction 0.05 --no-progress 2>&1 | tail -3

echo "== 119M through launchers/pretrain.sh ($(( $(date +%s) - START )) s)"
timeout --preserve-status -s TERM -k 60 "$T119" bash launchers/pretrain.sh configs/pmnet_119m.yaml \
    'data.streams=[{local: /tmp/pmd, split: train}]' 'data.val_streams=[{local: /tmp/pmd, split: val}]' \
    train.global_batch_size=8 train.micro_batch_size=8 train.max_steps="$STEPS_119M" optim.warmup_steps=30 \
    eval.interval=100 eval.max_batches=4 checkpoint.interval=100000 checkpoint.save_at_end=false \
    logging.console_interval=20 logging.log_interval=1 train.run_root=/tmp/runs train.run_name=p119 \
    > "$RES/train_119m.log" 2>&1
echo "exit $?"
grep -v -i -E "warn|^\s*$" "$RES/train_119m.log" | grep -E "step|bpb|error|Error" | tail -25
cp -r /tmp/runs/p119/tb "$RES/tb_119m" 2>/dev/null
cp /tmp/runs/p119/train.log "$RES/train_119m_run.log" 2>/dev/null

echo "== copy-paste experiment ($(( $(date +%s) - START )) s)"
TRAIN_TIMEOUT="$CP_SECONDS" SAMPLES="${SAMPLES:-32}" RUN_ROOT=/tmp/cp \
    bash benchmarks/copy_paste_experiment.sh "$RES/copy_paste" "$CP_STEPS" > "$RES/copy_paste.log" 2>&1
echo "exit $?"
tail -40 "$RES/copy_paste.log" | grep -v -i warn

tar czf "$OUT/results.tgz" -C "$RES" .
echo "== done in $(( $(date +%s) - START )) s"
