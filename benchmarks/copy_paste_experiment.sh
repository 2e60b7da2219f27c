#!/usr/bin/env bash
# The copy-paste experiment (docs/model.md section 8) in one command: train PMNet-30M and the same
# model without memory on the copy-paste task, then measure exact-match accuracy by copy length N.
#
#   bash benchmarks/copy_paste_experiment.sh OUT_DIR [STEPS] [section.key=value ...]
#
# OUT_DIR receives copy_paste.{csv,png,md} (accuracy by N, one line per model),
# train_curves.{csv,png,md} (loss and the per-step pre-clip grad norm of both runs), both
# train.log files and summary.md (tables + the commands). STEPS (default: the recipe's 3000)
# sets train.max_steps of both runs; extra overrides go to both trainings (e.g. a smaller
# train.micro_batch_size).
#
# Environment:
#   RUN_ROOT   where the run directories live (default runs/copy_paste_experiment). Runs resume
#              from their latest checkpoint, so when one sitting is not enough, call this again
#              with the same RUN_ROOT and STEPS: finished runs are skipped, unfinished ones resume.
#   VARIANTS   which runs to train, "pmnet nomem" (default); e.g. VARIANTS=pmnet to split the
#              work over two calls. Evaluation covers every variant whose run has a checkpoint.
#   PHASES     "train eval" (default); PHASES=eval only evaluates.
#   TRAIN_TIMEOUT  seconds per training run this call (e.g. 240): the run then gets SIGTERM, saves
#              a checkpoint and exits cleanly, and the script goes on (next variant, evaluation).
#              Calling again resumes each run; the lr schedule always spans STEPS.
#   STOP_AT    stop each run after this optimizer step this call (train.stop_at_step), same idea.
#   SAMPLES    copy-paste samples per N bucket (default 64); EDGES bucket edges (tool default).
#   MERGE      copy_paste.csv files of runs evaluated elsewhere, merged into this table and plot
#              (tools/eval_copy_paste.py --merge). On a lent GPU whose disk is gone after each call
#              (checkpoints of the 30M runs, ~400 MB, cannot travel back), train and evaluate one
#              variant per call (VARIANTS=pmnet, then VARIANTS=nomem) and merge the two CSVs after.
#   PMNET_PYTHON  the Python (default: .venv/bin/python if present, else python).
# On a machine without a GPU add: model.attn_backend=sdpa train.precision=fp32 train.device=cpu.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
[[ $# -ge 1 && "$1" != -* ]] || { echo "usage: bash benchmarks/copy_paste_experiment.sh OUT_DIR [STEPS] [overrides...]" >&2; exit 2; }
OUT="$1"; shift
STEPS=""
if [[ $# -ge 1 && "$1" =~ ^[0-9]+$ ]]; then STEPS="$1"; shift; fi
if [[ -z "${PMNET_PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PMNET_PYTHON="$REPO/.venv/bin/python"; else PMNET_PYTHON=python; fi
fi
export PMNET_PYTHON
PY="$PMNET_PYTHON"
RUN_ROOT="${RUN_ROOT:-runs/copy_paste_experiment}"
VARIANTS="${VARIANTS:-pmnet nomem}"
PHASES="${PHASES:-train eval}"
SAMPLES="${SAMPLES:-64}"
mkdir -p "$OUT" "$RUN_ROOT"
START=$(date +%s)

config_of() { [[ "$1" == pmnet ]] && echo configs/copy_paste_30m.yaml || echo configs/copy_paste_30m_nomem.yaml; }
run_of() { [[ "$1" == pmnet ]] && echo copy_paste_30m || echo copy_paste_30m_nomem; }
label_of() { [[ "$1" == pmnet ]] && echo PMNet || echo no-memory; }

COMMON=(train.run_root="$RUN_ROOT")
[[ -n "$STEPS" ]] && COMMON+=(train.max_steps="$STEPS")
[[ -n "${STOP_AT:-}" ]] && COMMON+=(train.stop_at_step="$STOP_AT")
LIMIT=()
# SIGTERM makes every rank checkpoint and exit 0; -k kills what is still there 3 minutes later
[[ -n "${TRAIN_TIMEOUT:-}" ]] && LIMIT=(timeout --preserve-status -s TERM -k 180 "$TRAIN_TIMEOUT")
COMMANDS=()

if [[ " $PHASES " == *" train "* ]]; then
    for v in $VARIANTS; do
        cfg=$(config_of "$v")
        cmd=(bash launchers/pretrain.sh "$cfg" "${COMMON[@]}" "$@")
        COMMANDS+=("${cmd[*]}")
        echo "== train $v: ${cmd[*]}  ($(( $(date +%s) - START )) s so far)"
        rc=0
        "${LIMIT[@]}" "${cmd[@]}" || rc=$?
        if [[ $rc -ne 0 ]]; then
            # a run stopped by TRAIN_TIMEOUT may report the signal (143 = SIGTERM) although it saved
            if [[ -n "${TRAIN_TIMEOUT:-}" && ( $rc -eq 124 || $rc -eq 143 ) ]]; then
                echo "note: $v stopped after TRAIN_TIMEOUT=${TRAIN_TIMEOUT}s (exit $rc); it resumes on the next call" >&2
            else
                echo "error: training $v failed (exit $rc)" >&2
                exit "$rc"
            fi
        fi
    done
fi

if [[ " $PHASES " == *" eval "* ]]; then
    CKPTS=(); LABELS=(); RUNS=()
    for v in pmnet nomem; do
        d="$RUN_ROOT/$(run_of "$v")"
        if [[ -f "$d/checkpoints/latest" ]]; then
            CKPTS+=("$d"); LABELS+=("$(label_of "$v")"); RUNS+=("$d")
            cp -f "$d/train.log" "$OUT/train_$(run_of "$v").log" 2>/dev/null || true
        else
            echo "note: $d has no checkpoint; not evaluated" >&2
        fi
    done
    [[ ${#CKPTS[@]} -gt 0 ]] || { echo "error: no trained run under $RUN_ROOT" >&2; exit 1; }
    EXTRA=()
    [[ -n "${EDGES:-}" ]] && EXTRA+=(--edges "$EDGES")
    # shellcheck disable=SC2206
    [[ -n "${MERGE:-}" ]] && EXTRA+=(--merge $MERGE)
    cmd=("$PY" tools/eval_copy_paste.py "${CKPTS[@]}" --labels "${LABELS[@]}" --samples "$SAMPLES" --out "$OUT" "${EXTRA[@]}")
    COMMANDS+=("${cmd[*]}")
    echo "== evaluate: ${cmd[*]}"
    "${cmd[@]}"
    cmd=("$PY" -m pmnet.eval.run_logs "${RUNS[@]}" --labels "${LABELS[@]}" --out "$OUT")
    COMMANDS+=("${cmd[*]}")
    echo "== training curves: ${cmd[*]}"
    "${cmd[@]}"
    {
        echo "# Copy-paste experiment"
        echo
        echo "Exact-match / per-byte accuracy (%) by copy length N (greedy decoding; lookback 2N):"
        echo
        cat "$OUT/copy_paste.md"
        echo
        echo "Gradient norm (pre-clip, every step) of the training runs:"
        echo
        cat "$OUT/train_curves.md"
        echo
        echo "Figures: copy_paste.png, train_curves.png. Commands (from $REPO, $(date -u +%Y-%m-%dT%H:%MZ)):"
        echo
        for c in "${COMMANDS[@]}"; do echo "    $c"; done
    } > "$OUT/summary.md"
    echo "wrote $OUT/summary.md"
fi
echo "done in $(( $(date +%s) - START )) s"
