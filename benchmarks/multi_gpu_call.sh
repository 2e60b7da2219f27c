#!/usr/bin/env bash
# Issue 17 on one host with several GPUs (NCCL): scaling, resume across GPU counts, tools at scale.
# Written to run unchanged on an nvidia-h200-x8 (or -x4 / -x2: counts above the visible GPUs are
# skipped). Each part fits one 10-minute call; run them back to back so the compile cache is warm.
#
#   scaling: the real 119M config through launchers/pretrain.sh on GPU_COUNTS (default "1 2 4 8")
#            x STAGES (default "1 2 3"), global batch 64 throughout, STEPS steps each with a profile
#            of the last two; then benchmarks/scaling_table.py (bytes/s, per GPU, efficiency, peak
#            memory, communication share, first losses) -> $OUT/scaling.json.
#   resume:  ZeRO-2 on KILL_GPUS (default 8) GPUs, SIGKILL once its step-10 checkpoint exists,
#            a universal checkpoint, then the same command on RESUME_GPUS (default 4) to step 20:
#            the resume line (step, bytes seen) and the audit of the final checkpoint (data position
#            against bytes seen) show that no sample was lost or repeated.
#   tools:   a ZeRO-3 run on all GPUs to a checkpoint; convert it to interchange, audit it, and
#            evaluate the export on TEXT_DIR's books (TensorBoard written by rank 0 alone: one events
#            file in tb/).
# Usage (GPU machine, wheels of the GPU README on PYTHONPATH):
#   bash benchmarks/multi_gpu_call.sh OUT scaling|resume|tools TEXT_DIR
set -uo pipefail
OUT="${1:?usage: multi_gpu_call.sh OUT scaling|resume|tools TEXT_DIR}"
PART="${2:?scaling, resume or tools}"
TEXT="${3:?TEXT_DIR: text to shard (and books for 'tools')}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PMNET_PYTHON:-python3}"
export PMNET_PYTHON="$PY" PYTHONUNBUFFERED=1
# NVLink multicast off (the lent machines require it; the launcher passes these to every rank too)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
START=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - START )) s)"; }
NG=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$NG" -ge 1 ] || { echo "no GPU visible"; exit 2; }
STEPS="${STEPS:-20}"
CACHE=/tmp/pmnet_compile_cache   # shared by all runs of the call: each graph compiles once

if [ ! -f /tmp/pmd/manifest.json ]; then
    stamp "shard $TEXT"
    "$PY" tools/shard_dataset.py "$TEXT" --out /tmp/pmd --sample-bytes 8193 --val-fraction 0.02 \
        --no-progress 2>&1 | tail -1
fi
common=(configs/pmnet_119m.yaml 'data.streams=[{local: /tmp/pmd, split: train}]' 'data.val_streams=[]'
        optim.warmup_steps=10 eval.interval=0 train.run_root=/tmp/runs train.compile_cache_dir="$CACHE")

if [ "$PART" = scaling ]; then
    runs=()
    for g in ${GPU_COUNTS:-1 2 4 8}; do
        [ "$g" -le "$NG" ] || { echo "skip $g GPUs: $NG visible"; continue; }
        for z in ${STAGES:-1 2 3}; do
            stamp "$g GPU(s), ZeRO-$z, $STEPS steps"
            rm -rf "/tmp/runs/g${g}_z$z"
            timeout -k 20 "${RUN_S:-150}" bash launchers/pretrain.sh --gpus "$g" "${common[@]}" \
                train.max_steps="$STEPS" deepspeed.zero_stage="$z" checkpoint.interval=100000 \
                checkpoint.save_at_end=false logging.log_interval=5 logging.console_interval=5 \
                logging.profile_at_step=$((STEPS - 1)) logging.profile_steps=1 train.run_name="g${g}_z$z" \
                > "$OUT/scaling_g${g}_z$z.log" 2>&1
            echo "exit $?"; grep -E "^step +[0-9]+" "$OUT/scaling_g${g}_z$z.log" | tail -2
            runs+=("/tmp/runs/g${g}_z$z")
        done
    done
    "$PY" benchmarks/scaling_table.py "${runs[@]}" --json "$OUT/scaling.json"
elif [ "$PART" = resume ]; then
    KG="${KILL_GPUS:-8}"; RG="${RESUME_GPUS:-4}"
    [ "$KG" -le "$NG" ] || { echo "needs $KG GPUs, $NG visible"; exit 2; }
    rm -rf /tmp/runs/k
    run=(bash launchers/pretrain.sh "${common[@]}" train.max_steps=20 deepspeed.zero_stage=2
         checkpoint.interval=10 logging.console_interval=1 train.run_name=k)
    stamp "ZeRO-2 on $KG GPUs, SIGKILL after the step-10 checkpoint"
    setsid "${run[@]}" --gpus "$KG" > "$OUT/resume_killed.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        [ -f /tmp/runs/k/checkpoints/step_00000010/manifest.json ] && break
        sleep 0.5
    done
    sleep 3   # a few steps past the checkpoint: work that the resume must redo
    kill -9 -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    grep -E "^step +[0-9]+|checkpoint saved" "$OUT/resume_killed.log" | tail -3
    stamp "universal checkpoint for $RG GPUs"
    "$PY" tools/resume.py /tmp/runs/k | tail -3
    "$PY" tools/convert_checkpoint.py universal /tmp/runs/k/checkpoints/step_00000010 --world-size "$RG" | tail -2
    stamp "resume on $RG GPUs to step 20"
    timeout -k 20 300 "${run[@]}" --gpus "$RG" > "$OUT/resume_resumed.log" 2>&1
    echo "exit $?"; grep -E "resumed from|^step +(1[1-3]|20)/" "$OUT/resume_resumed.log"
    "$PY" tools/audit_checkpoint.py /tmp/runs/k/checkpoints/step_00000020 > "$OUT/resume_audit.txt" 2>&1
    echo "audit exit $?"; tail -14 "$OUT/resume_audit.txt"
elif [ "$PART" = tools ]; then
    rm -rf /tmp/runs/z3 /tmp/export
    stamp "ZeRO-3 on $NG GPUs to a checkpoint at step 5"
    timeout -k 20 300 bash launchers/pretrain.sh "${common[@]}" train.max_steps=5 deepspeed.zero_stage=3 \
        checkpoint.interval=5 train.run_name=z3 > "$OUT/tools_z3.log" 2>&1
    echo "exit $?"; ls /tmp/runs/z3/tb
    stamp "convert, audit, evaluate"
    "$PY" tools/convert_checkpoint.py interchange /tmp/runs/z3 --out /tmp/export 2>&1 | tail -2
    "$PY" tools/audit_checkpoint.py /tmp/runs/z3/checkpoints/step_00000005 2>&1 | tail -4
    "$PY" tools/eval_long_context.py /tmp/export --books "$TEXT" --max-bytes 65536 --dtype bf16 \
        --out "$OUT/eval_z3" 2>&1 | grep -v -i warn | tail -6
else
    echo "unknown part $PART"; exit 2
fi
stamp done
