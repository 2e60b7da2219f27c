#!/usr/bin/env bash
# One lent-GPU call of the copy-paste experiment: train ONE variant (pmnet | nomem) for at most
# TRAIN_SECONDS, evaluate it by N, and pack logs, TensorBoard events and the CSV/PNG/tables into
# OUT/results_<variant>.tgz (one file: a lent machine returns at most 8 files, and its disk,
# checkpoints included, is gone after the call, so a run cannot resume in a later call).
#
#   bash benchmarks/h200_copy_paste_call.sh OUT VARIANT [STEPS] [section.key=value ...]
#
# STEPS (default 2000, about what one 600-s call holds for PMNet-30M compiled at micro 32:
# 0.21 s/step + ~60 s compile + ~30 s evaluation) sets train.max_steps, so the lr schedule and the
# curriculum fit the call. Afterwards, on any machine, merge the two variants' tables:
#   python tools/eval_copy_paste.py --merge A/cp/copy_paste.csv B/cp/copy_paste.csv \
#       --receptive-field 1536 --out merged
# Environment: TRAIN_SECONDS (default 470), SAMPLES per N bucket (default 64), PMNET_PYTHON.
set -uo pipefail
[[ $# -ge 2 ]] || { echo "usage: bash benchmarks/h200_copy_paste_call.sh OUT pmnet|nomem [STEPS] [overrides...]" >&2; exit 2; }
OUT="$1"; VARIANT="$2"; shift 2
[[ "$VARIANT" == pmnet || "$VARIANT" == nomem ]] || { echo "error: VARIANT must be pmnet or nomem, got '$VARIANT'" >&2; exit 2; }
STEPS=2000
if [[ $# -ge 1 && "$1" =~ ^[0-9]+$ ]]; then STEPS="$1"; shift; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PMNET_PYTHON="${PMNET_PYTHON:-python3}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor_cache}"
RES="$(mktemp -d /tmp/cp_call_XXXXXX)"
RUNS="$RES/runs"
mkdir -p "$OUT"

VARIANTS="$VARIANT" TRAIN_TIMEOUT="${TRAIN_SECONDS:-470}" RUN_ROOT="$RUNS" SAMPLES="${SAMPLES:-64}" \
    bash benchmarks/copy_paste_experiment.sh "$RES/cp" "$STEPS" "$@" > "$RES/experiment.log" 2>&1
rc=$?
for run in "$RUNS"/*/; do
    [[ -d "$run/tb" ]] && cp -r "$run/tb" "$RES/tb_$(basename "$run")"
done
rm -rf "$RUNS"  # checkpoints stay behind: too large to come back
tar czf "$OUT/results_$VARIANT.tgz" -C "$RES" .
grep -E "step +[0-9]+/" "$RES/experiment.log" | awk 'NR % 20 == 0' | tail -12
grep -v -i warn "$RES/experiment.log" | tail -3
cat "$RES/cp/copy_paste.md" 2>/dev/null
echo "exit $rc; wrote $OUT/results_$VARIANT.tgz"
rm -rf "$RES"
exit "$rc"
