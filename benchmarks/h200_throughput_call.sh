#!/usr/bin/env bash
# One lent-GPU call for issue 8, in one of two parts (each fits one 600-s call; run "train"
# then "launch" back to back so the second finds the machine warm with its inductor cache).
#   train:  GPU tests of the fast path (Triton score kernel, flex, compiled layers), then
#           benchmarks/train_throughput.py A/B: Triton score kernel on vs off (fast-inductor),
#           compiled modules vs whole layers, micro 8, plus a profile of the bare step.
#   tune:   the launcher once per DeepSpeed setting in TUNE_SETS (A/B on one machine).
#   launch: the real 119M config through launchers/pretrain.sh (global 64 = 8 x micro 8) on
#           TEXT_DIR sharded into 8,193-byte samples, then long-context eval speed / BPB.
#   curve:  the 119M fast-vs-reference bf16 loss curve over STEPS (default 200 here) steps on TEXT_DIR.
#   tests:  the slow GPU tests (whole-layer compilation; evaluation, with TEXT_DIR as the books).
#   restart:  issue 16: seconds to the first step, cold and on a restart with the compile cache
#           (RESTART_OVERRIDES: config overrides for both; RESTART_STEPS: the warm run's last step).
#   evalrate: issue 16: long-context evaluation speed call by call (TEXT_DIR: books >= 512 KiB).
#   suite:    every GPU-marked test but the whole-layer compilation ones (TEXT_DIR: books).
#   agree:    issue 16: flex (GPU) vs sdpa (CPU) per-position BPB, routing flips counted.
#   ab:       issue 16: the GPU tests of the kernels and the fast path, the kernels' micro-benchmarks, then the 119M config
#           through the launcher once per environment set in AB_SETS (kernels off / on), STEPS
#           steps each with a profile, and the median bytes/s of each.
#   dropout: issue 20: the GPU tests of the blocked window, then the real 119M config through the
#           launcher twice, model.attention_dropout=0.0 (flex) and 0.1 (blocked sdpa), STEPS steps
#           each, and the median bytes/s of both (benchmarks/window_attention.py logs; target:
#           0.1 within 10% of 0.0), plus the bare-model step of flex / blocked / dense sdpa.
# Usage (GPU machine, wheels of ../shared/gpu/README.md on PYTHONPATH):
#   bash benchmarks/h200_throughput_call.sh OUT train|launch|tune|curve|tests|restart|evalrate|agree|suite|dropout|ab [TEXT_DIR] [STEPS]
set -uo pipefail
OUT="${1:?usage: h200_throughput_call.sh OUT train|launch|tune|curve|tests|restart|evalrate|agree|suite|dropout|ab [TEXT_DIR] [STEPS]}"
PART="${2:?train or launch}"
TEXT="${3:-data_pipeline/samples}"
STEPS="${4:-40}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PMNET_PYTHON:-python3}"
export PMNET_PYTHON="$PY" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
START=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - START )) s)"; }

if [ "$PART" = train ]; then
    stamp "GPU tests of the score kernel"
    timeout 150 "$PY" -m pytest -v -rA --tb=short -p no:cacheprovider tests/model/test_triton_scores.py \
        > "$OUT/gpu_tests_kernel.txt" 2>&1
    grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/gpu_tests_kernel.txt" | tail -12
    stamp "train_throughput"
    timeout 330 "$PY" benchmarks/train_throughput.py --config configs/pmnet_119m.yaml \
        --variants ${VARIANTS:-fast:modules:8,fast-inductor:modules:8} --profile modules:8 \
        --out-dir "$OUT" --json "$OUT/train_throughput.json" --budget-s 240 > "$OUT/train_throughput_log.txt" 2>&1
    grep -v -i -E "warn|^\s*$" "$OUT/train_throughput_log.txt" | tail -12
    head -12 "$OUT/profile_modules.txt" 2>/dev/null
    stamp "GPU tests of the model (flex, streaming, compiled layers)"
    timeout "${MODEL_TESTS_S:-150}" "$PY" -m pytest -v -rA --tb=short -p no:cacheprovider tests/model/test_model_gpu.py \
        > "$OUT/gpu_tests_model.txt" 2>&1
    grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/gpu_tests_model.txt" | tail -15
elif [ "$PART" = launch ]; then
    stamp "shard $TEXT"
    rm -rf /tmp/pmd /tmp/runs
    "$PY" tools/shard_dataset.py "$TEXT" --out /tmp/pmd --sample-bytes 8193 --val-fraction 0.02 \
        --no-progress 2>&1 | tail -2
    stamp "119M through launchers/pretrain.sh, $STEPS steps of 64 x 8192 bytes"
    timeout --preserve-status -s TERM -k 30 330 bash launchers/pretrain.sh configs/pmnet_119m.yaml \
        'data.streams=[{local: /tmp/pmd, split: train}]' 'data.val_streams=[]' \
        train.max_steps="$STEPS" optim.warmup_steps=10 eval.interval=0 checkpoint.interval=100000 \
        checkpoint.save_at_end=false logging.console_interval="${LOG_EVERY:-10}" logging.log_interval="${LOG_EVERY:-10}" \
        train.run_root=/tmp/runs train.run_name=p119 logging.profile_at_step="${PROFILE_AT:-$((STEPS - 2))}" \
        logging.profile_steps=1 > "$OUT/launcher_119m.log" 2>&1
    echo "exit $?"
    grep -E "step +[0-9]+|bytes/s" "$OUT/launcher_119m.log" | grep -v -i warn | tail -10
    # the real trainer step profiled (DeepSpeed, accumulation, optimizer): where the launcher's
    # time per micro-batch exceeds the bare model's
    cp /tmp/runs/p119/profile/steps_*.txt "$OUT/" 2>/dev/null && head -12 "$OUT"/steps_*.txt
    stamp "long-context"
    if [ -d .bench_books ]; then
        timeout 150 "$PY" benchmarks/train_throughput.py --config configs/pmnet_119m.yaml --variants , \
            --long-context --books .bench_books --out-dir "$OUT" --json "$OUT/long_context.json" \
            > "$OUT/long_context_log.txt" 2>&1
        grep -E "^eval|ERROR" "$OUT/long_context_log.txt" | tail -6
    fi
elif [ "$PART" = tune ]; then
    # A/B of DeepSpeed settings through the launcher, one short run each, same machine and shards:
    # TUNE_SETS="label:override override;label2:..." (label "base" with no overrides first)
    stamp "shard $TEXT"
    rm -rf /tmp/pmd && "$PY" tools/shard_dataset.py "$TEXT" --out /tmp/pmd --sample-bytes 8193 \
        --val-fraction 0.02 --no-progress 2>&1 | tail -1
    IFS=';' read -ra SETS <<< "${TUNE_SETS:-base:}"
    for set in "${SETS[@]}"; do
        label="${set%%:*}"; read -ra extra <<< "${set#*:}"
        stamp "launcher $label: ${extra[*]:-}"
        rm -rf /tmp/runs
        timeout --preserve-status -s TERM -k 20 "${TUNE_RUN_S:-130}" bash launchers/pretrain.sh configs/pmnet_119m.yaml \
            'data.streams=[{local: /tmp/pmd, split: train}]' 'data.val_streams=[]' \
            train.max_steps="$STEPS" optim.warmup_steps=10 eval.interval=0 checkpoint.interval=100000 \
            checkpoint.save_at_end=false logging.console_interval=5 logging.log_interval=1 \
            train.run_root=/tmp/runs train.run_name=p119 "${extra[@]}" > "$OUT/tune_$label.log" 2>&1
        echo "exit $?"
        grep -E "^step +[0-9]+" "$OUT/tune_$label.log" | tail -4
    done
elif [ "$PART" = curve ]; then
    # issue 8's 200-step bf16 loss curve at 119M: fast path compiled as in training vs the
    # per-position reference, same init and batches (TEXT_DIR: training text; ~4 minutes)
    CSTEPS="${4:-200}"
    stamp "fast vs reference, 119M, $CSTEPS steps"
    timeout "${CURVE_S:-420}" "$PY" benchmarks/fast_vs_reference_curve.py --preset pmnet_119m --device cuda \
        --compile --steps "$CSTEPS" --seq 128 --batch 8 --lr 6e-4 --text "$TEXT" \
        --json "$OUT/fast_vs_reference_119m_bf16.json" > "$OUT/curve_log.txt" 2>&1
    echo "exit $?"
    grep -v -i warn "$OUT/curve_log.txt" | grep -E "^[a-z]|step (50|100|150|200):" | tail -12
elif [ "$PART" = tests ]; then
    # the GPU tests that need the most time: whole-layer compilation (cold: minutes) and the
    # evaluation tests, which read books from TEXT_DIR (carried; PMNET_SHARED_DATA/books)
    mkdir -p /tmp/shared_data && ln -sfn "$(cd "$TEXT" && pwd)" /tmp/shared_data/books
    stamp "GPU tests: evaluation"
    PMNET_SHARED_DATA=/tmp/shared_data timeout 150 "$PY" -m pytest -v -rA --tb=short -p no:cacheprovider \
        tests/eval/test_eval_gpu.py > "$OUT/gpu_tests_eval.txt" 2>&1
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed" "$OUT/gpu_tests_eval.txt" | tail -6
    stamp "GPU tests: whole-layer compilation"
    timeout "${MODEL_TESTS_S:-400}" "$PY" -m pytest -v -rA --tb=short -p no:cacheprovider tests/model/test_model_gpu.py \
        tests/model/test_fast_path.py -m gpu -k "compiled or 119m or compile" > "$OUT/gpu_tests_compiled.txt" 2>&1
    grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed" "$OUT/gpu_tests_compiled.txt" | tail -10
elif [ "$PART" = restart ]; then
    # issue 16: time from process start to the first optimizer step, cold (empty compile cache in
    # the run directory) and on a restart that resumes from a checkpoint and finds the cache
    stamp "shard $TEXT"
    rm -rf /tmp/pmd /tmp/runs && "$PY" tools/shard_dataset.py "$TEXT" --out /tmp/pmd --sample-bytes 8193 \
        --val-fraction 0.02 --no-progress 2>&1 | tail -1
    # RESTART_OVERRIDES: config overrides for both runs (e.g. train.compile_mode=layers);
    # RESTART_STEPS: where the warm run stops (more steps: its bytes/s too, logged every 2 steps)
    read -ra extra <<< "${RESTART_OVERRIDES:-}"
    since='import sys, time
t0 = float(sys.argv[1])
for line in sys.stdin:
    print(f"{time.time() - t0:7.2f} {line}", end="", flush=True)'

    common=(configs/pmnet_119m.yaml 'data.streams=[{local: /tmp/pmd, split: train}]' 'data.val_streams=[]'
            train.max_steps="${RESTART_STEPS:-4}" optim.warmup_steps=2 eval.interval=0 checkpoint.interval=100000
            logging.console_interval=1 logging.log_interval=1 train.run_root=/tmp/runs train.run_name=r119 "${extra[@]}")
    stamp "cold: steps 1-2, then a checkpoint (train.stop_at_step=2)"
    t0=$(date +%s.%N)
    timeout -k 20 300 bash launchers/pretrain.sh "${common[@]}" train.stop_at_step=2 2>&1 | "$PY" -u -c "$since" "$t0" \
        > "$OUT/restart_cold.log"
    echo "exit ${PIPESTATUS[0]}"; grep -E "first step done|torch.compile in|resumed from|checkpoint saved| step +[0-9]+" "$OUT/restart_cold.log" | tail -6
    du -sh /tmp/runs/r119/compile_cache 2>/dev/null
    # each warm line is prefixed with the seconds since the command started (what a user waits:
    # the launcher's pre-flight, DeepSpeed's runner and launcher, then the trainer's own start-up)
    stamp "warm restart: resumes at step 2 with the run directory's compile cache"
    t0=$(date +%s.%N)
    timeout -k 20 240 bash launchers/pretrain.sh "${common[@]}" 2>&1 | "$PY" -u -c "$since" "$t0" > "$OUT/restart_warm.log"
    echo "exit ${PIPESTATUS[0]}"; grep -E "first step done|torch.compile in|resumed from| step +[0-9]+" "$OUT/restart_warm.log" | tail -6
    stamp "second warm restart: resumes at step 4, stops at 6"
    t0=$(date +%s.%N)
    timeout -k 20 240 bash launchers/pretrain.sh "${common[@]}" train.max_steps=6 --allow-change train.max_steps 2>&1 | "$PY" -u -c "$since" "$t0" \
        > "$OUT/restart_warm2.log"
    echo "exit ${PIPESTATUS[0]}"; grep -E "first step done|resumed from| step +[0-9]+" "$OUT/restart_warm2.log" | tail -4
    if [ -n "${RESTART_THIRD_ENV:-}" ]; then  # a variant: e.g. RESTART_THIRD_ENV=TORCHINDUCTOR_COMPILE_THREADS=1
        stamp "third warm restart with $RESTART_THIRD_ENV: resumes at step 6, stops at 8"
        t0=$(date +%s.%N)
        env $RESTART_THIRD_ENV timeout -k 20 240 bash launchers/pretrain.sh "${common[@]}" train.max_steps=8 --allow-change train.max_steps 2>&1 \
            | "$PY" -u -c "$since" "$t0" > "$OUT/restart_warm3.log"
        echo "exit ${PIPESTATUS[0]}"; grep -E "first step done|torch.compile in| step +[0-9]+" "$OUT/restart_warm3.log" | tail -4
    fi
elif [ "$PART" = evalrate ]; then
    # issue 16: long-context bf16 evaluation speed call by call through the library path
    stamp "eval rate, 119M bf16 compiled, books in $TEXT"
    timeout 300 "$PY" benchmarks/eval_rate.py --books "$TEXT" --preset pmnet_119m --dtype bf16 --compile \
        --lengths "${LENGTHS:-65536,65536,524288,65536}" --json "$OUT/eval_rate.json" > "$OUT/eval_rate_log.txt" 2>&1
    echo "exit $?"; grep -E "^\||compile=" "$OUT/eval_rate_log.txt"
elif [ "$PART" = agree ]; then
    # issue 16: flex on the GPU vs sdpa on the CPU, per position, with routing flips counted
    for gain in 1 50; do
        stamp "agreement, write gain $gain"
        timeout 300 "$PY" benchmarks/eval_device_agreement.py --books "$TEXT" --write-gain $gain \
            --json "$OUT/agreement_gain$gain.json" > "$OUT/agreement_gain$gain.txt" 2>&1
        echo "exit $?"; grep -v -i warn "$OUT/agreement_gain$gain.txt" | tail -12
    done
elif [ "$PART" = suite ]; then
    # every GPU-marked test except the whole-layer compilation ones (the "tests" part), books from TEXT_DIR
    mkdir -p /tmp/shared_data && ln -sfn "$(cd "$TEXT" && pwd)" /tmp/shared_data/books
    stamp "GPU suite (-m gpu, not whole-layer compilation)"
    PMNET_SHARED_DATA=/tmp/shared_data timeout "${SUITE_S:-300}" "$PY" -m pytest -q -rA --tb=short -p no:cacheprovider \
        -m gpu -k "not compiled_decoder_layers" tests > "$OUT/gpu_suite.txt" 2>&1
    echo "exit $?"; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT/gpu_suite.txt" | tail -40
elif [ "$PART" = dropout ]; then
    stamp "GPU tests of the blocked window"
    timeout 120 "$PY" -m pytest -v -rA --tb=short -p no:cacheprovider tests/model/test_attention_blocked.py \
        > "$OUT/gpu_tests_window.txt" 2>&1
    grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/gpu_tests_window.txt" | tail -6
    stamp "shard $TEXT"
    rm -rf /tmp/pmd && "$PY" tools/shard_dataset.py "$TEXT" --out /tmp/pmd --sample-bytes 8193 \
        --val-fraction 0.02 --no-progress 2>&1 | tail -1
    for drop in 0.0 0.1; do
        stamp "119M through launchers/pretrain.sh, model.attention_dropout=$drop, $STEPS steps"
        rm -rf /tmp/runs
        timeout --preserve-status -s TERM -k 20 "${DROPOUT_RUN_S:-200}" bash launchers/pretrain.sh configs/pmnet_119m.yaml \
            'data.streams=[{local: /tmp/pmd, split: train}]' 'data.val_streams=[]' \
            train.max_steps="$STEPS" optim.warmup_steps=10 eval.interval=0 checkpoint.interval=100000 \
            checkpoint.save_at_end=false logging.console_interval=5 logging.log_interval=5 \
            train.run_root=/tmp/runs train.run_name=p119 model.attention_dropout="$drop" \
            train.compile_cache_dir=/tmp/pmnet_compile_cache > "$OUT/dropout_$drop.log" 2>&1
        echo "exit $?"
        grep -E "step +[0-9]+/" "$OUT/dropout_$drop.log" | tail -3
    done
    # medians after the first 2 console lines (step 1 and step 5: compilation and warm-up)
    "$PY" benchmarks/window_attention.py logs "$OUT/dropout_0.0.log" "$OUT/dropout_0.1.log" --skip 2 \
        --json "$OUT/dropout_launcher.json"
    [ "${BARE_STEP:-1}" = 1 ] || { stamp done; exit 0; }
    stamp "bare 119M step: flex vs blocked / dense sdpa with dropout 0.1"
    timeout 150 "$PY" benchmarks/window_attention.py train --device cuda --preset pmnet_119m --seq 8192 --micro 8 \
        --steps 5 --warmup 2 --variants flex/0,sdpa-blocked/0.1,sdpa-blocked/0,sdpa-dense/0.1 \
        --json "$OUT/dropout_step.json" 2>&1 | grep -v -i warn | tail -8
elif [ "$PART" = ab ]; then
    # issue 16: fast-path kernels on vs off. The GPU tests of the Triton kernels, their
    # micro-benchmarks, then the real 119M config through the launcher once per set of
    # environment switches and config overrides in AB_SETS ("label:VAR=1 train.key=value;label2:...";
    # the first is the baseline), STEPS steps each, the same shards and compile cache, a profile of step STEPS-2,
    # and the median bytes/s of each (benchmarks/window_attention.py logs).
    if [ "${AB_MICRO:-1}" = 1 ]; then  # AB_MICRO=0: the launcher runs only
    stamp "GPU tests of the Triton kernels"
    timeout "${KERNEL_TESTS_S:-240}" "$PY" -m pytest -q -rA --tb=short -p no:cacheprovider -m gpu \
        -k "not compiled_decoder_layers" tests/model/test_triton_scores.py \
        tests/model/test_triton_scan.py tests/model/test_fast_path.py tests/model/test_model_gpu.py \
        > "$OUT/gpu_tests_kernels.txt" 2>&1
    grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT/gpu_tests_kernels.txt" | tail -24
    for bench in scan_kernel flex_window; do
        [ -f "benchmarks/$bench.py" ] || continue
        stamp "benchmarks/$bench.py"
        timeout 150 "$PY" benchmarks/$bench.py --json "$OUT/$bench.json" > "$OUT/$bench.txt" 2>&1
        echo "exit $?"; grep -v -i warn "$OUT/$bench.txt" | tail -8
    done
    fi
    stamp "shard $TEXT"
    rm -rf /tmp/pmd && "$PY" tools/shard_dataset.py "$TEXT" --out /tmp/pmd --sample-bytes 8193 \
        --val-fraction 0.02 --no-progress 2>&1 | tail -1
    IFS=";" read -ra SETS <<< "${AB_SETS:-blocked-scan:PMNET_TRITON_SCAN=0;triton-scan:}"
    logs=()
    for set in "${SETS[@]}"; do
        label="${set%%:*}"; read -ra items <<< "${set#*:}"
        envs=(); overrides=()  # NAME=value (upper case): environment; anything else: a config override
        for item in "${items[@]}"; do
            if [[ "$item" =~ ^[A-Z_][A-Z0-9_]*= ]]; then envs+=("$item"); else overrides+=("$item"); fi
        done
        stamp "119M through launchers/pretrain.sh, $label (${items[*]:-defaults}), $STEPS steps"
        rm -rf /tmp/runs
        env "${envs[@]}" timeout --preserve-status -s TERM -k 20 "${AB_RUN_S:-170}" bash launchers/pretrain.sh \
            configs/pmnet_119m.yaml 'data.streams=[{local: /tmp/pmd, split: train}]' 'data.val_streams=[]' \
            train.max_steps="$STEPS" optim.warmup_steps=10 eval.interval=0 checkpoint.interval=100000 \
            checkpoint.save_at_end=false logging.console_interval=2 logging.log_interval=2 \
            train.run_root=/tmp/runs train.run_name=p119 logging.profile_at_step=$((STEPS - 2)) \
            logging.profile_steps=1 train.compile_cache_dir=/tmp/pmnet_compile_cache "${overrides[@]}" \
            > "$OUT/ab_$label.log" 2>&1
        echo "exit $?"
        grep -E "step +[0-9]+/" "$OUT/ab_$label.log" | tail -2
        cp /tmp/runs/p119/profile/steps_*.txt "$OUT/profile_$label.txt" 2>/dev/null && head -11 "$OUT/profile_$label.txt" | tail -9
        cp /tmp/runs/p119/profile/shapes_*.txt "$OUT/shapes_$label.txt" 2>/dev/null  # logging.profile_shapes=true
        "$PY" -c "from pmnet.eval.run_logs import read_scalars as r; m = r('/tmp/runs/p119', ('perf/gpu_mem_gb',))['perf/gpu_mem_gb'][1]; print(f'peak GPU memory {m.max():.2f} GB')" 2>&1 | tail -1
        logs+=("$OUT/ab_$label.log")
    done
    # medians of the console lines after step 1 (compilation) and before the profiled step STEPS-2
    # (it and the step after it carry the profiler's cost)
    "$PY" benchmarks/window_attention.py logs "${logs[@]}" --skip 1 --before-step $((STEPS - 2)) --json "$OUT/ab_launcher.json"
else
    echo "unknown part $PART"; exit 2
fi
stamp done
