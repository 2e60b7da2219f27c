#!/usr/bin/env bash
# Pretrain PMNet through the DeepSpeed launcher, on CPU, one node or many, from one code path.
#
#   bash launchers/pretrain.sh CONFIG [section.key=value ...] [flags]
#
# Single node (default): every visible GPU, or --cpu-ranks N gloo ranks when there is none.
# Multi-node:
#   ssh between nodes:   --hostfile H                      (DeepSpeed's pdsh runner)
#   no ssh (one launch per node, e.g. srun or by hand):
#                        --num-nodes N --node-rank R --master-addr A [--master-port P] [--hostfile H]
#   SLURM:               --slurm   (nodes, node rank and master from SLURM_*; see launchers/slurm/)
# Per-rank mode: `deepspeed --no_python --hostfile H launchers/pretrain.sh CONFIG` starts this
# script once per rank with --local_rank=N (or RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* in the env);
# it then simply runs the trainer.
#
# Flags (environment variable in brackets):
#   --cpu-ranks N     ranks per node on a machine without GPUs     [PMNET_CPU_RANKS, default 1]
#   --gpus N          GPUs per node (default: all visible)          [PMNET_GPUS]
#   --hostfile H      DeepSpeed hostfile ("host slots=N" lines)     [PMNET_HOSTFILE]
#   --num-nodes N     nodes in the job                              [NNODES]
#   --node-rank R     this node's rank (selects the no-ssh mode)    [NODE_RANK]
#   --master-addr A   address of node 0                             [MASTER_ADDR, default 127.0.0.1]
#   --master-port P   rendezvous port                               [MASTER_PORT; multi-node default 29500]
#                     single node without one: a free port from the OS, and a relaunch on a fresh one
#                     if another process takes it first; a given port that is taken: one error line
#   --slurm           read the layout from SLURM_* variables
#   --allow-change F  accept a resume that changes the schedule / optimizer field F (comma-separated
#                     or repeated): train.max_steps, optim.{schedule,lr,min_lr_ratio,warmup_steps,
#                     decay_fraction,betas,eps,weight_decay}; without it such a resume is refused
#   --dry-run         print config, parameter count, FLOPs/byte, pre-flight, world layout, DeepSpeed
#                     JSON, command
# Before any rank starts (and with --dry-run) one Python process runs the pre-flight
# (pmnet.train.preflight): every data stream's index and sample size, and the run directory's
# saved config against this one (a changed model shape or global batch is always refused).
# SIGTERM, SIGUSR1 or Ctrl-C to this script (or its process group): every rank checkpoints at the
# next step boundary and the job exits 0; a second Ctrl-C stops without a checkpoint.
# The Python used is $PMNET_PYTHON, else `python` on PATH.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PMNET_PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
die() { echo "pretrain.sh: error: $*" >&2; exit 2; }
TMP_FILES=()
trap 'rm -f "${TMP_FILES[@]}"' EXIT

# ---------------------------------------------------------------- per-rank mode
if ! compgen -G "/dev/nvidia[0-9]*" > /dev/null; then
    # idle OpenMP threads sleep instead of spinning (spinning makes a shared CPU 10-50x slower)
    export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
fi
if [[ "${1:-}" == --local_rank=* || "${1:-}" == --local-rank=* ]]; then
    shift
    exec "$PY" -u -m pmnet.train "$@"
fi
if [[ -n "${RANK:-}" && -n "${WORLD_SIZE:-}" && -n "${LOCAL_RANK:-}" && -n "${MASTER_ADDR:-}" && -n "${MASTER_PORT:-}" ]]; then
    exec "$PY" -u -m pmnet.train "$@"
fi

# ---------------------------------------------------------------- arguments
unset PMNET_PORT_IN_USE_FILE PMNET_PREFLIGHT_REPORTED  # set below for the ranks of this launch
CPU_RANKS="${PMNET_CPU_RANKS:-1}"
GPUS="${PMNET_GPUS:-}"
HOSTFILE="${PMNET_HOSTFILE:-}"
NUM_NODES="${NNODES:-}"
NODE_RANK_ARG="${NODE_RANK:-}"
M_ADDR="${MASTER_ADDR:-}"
M_PORT="${MASTER_PORT:-29500}"
PORT_GIVEN=0; PORT_SRC=""; [[ -n "${MASTER_PORT:-}" ]] && { PORT_GIVEN=1; PORT_SRC="MASTER_PORT"; }
SLURM=0
DRY=0
ARGS=()
ALLOW=()
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu-ranks) need_value "$@"; CPU_RANKS="$2"; shift 2 ;;
        --gpus) need_value "$@"; GPUS="$2"; shift 2 ;;
        --hostfile) need_value "$@"; HOSTFILE="$2"; shift 2 ;;
        --num-nodes) need_value "$@"; NUM_NODES="$2"; shift 2 ;;
        --node-rank) need_value "$@"; NODE_RANK_ARG="$2"; shift 2 ;;
        --master-addr) need_value "$@"; M_ADDR="$2"; shift 2 ;;
        --master-port) need_value "$@"; M_PORT="$2"; PORT_GIVEN=1; PORT_SRC="--master-port"; shift 2 ;;
        --slurm) SLURM=1; shift ;;
        --dry-run) DRY=1; shift ;;
        --allow-change) need_value "$@"; ALLOW+=(--allow-change "$2"); shift 2 ;;
        -h|--help) sed -n '2,37p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
[[ ${#ARGS[@]} -ge 1 ]] || die "usage: bash launchers/pretrain.sh CONFIG [section.key=value ...] [--dry-run] (see --help)"
[[ -f "${ARGS[0]}" ]] || die "config file '${ARGS[0]}' not found"
for v in CPU_RANKS M_PORT; do [[ "${!v}" =~ ^[0-9]+$ ]] || die "--${v,,} must be a number, got '${!v}'"; done

# ---------------------------------------------------------------- devices on this node
NGPU=0
# Only where a GPU may exist: nvidia-smi's count when no CUDA_VISIBLE_DEVICES narrows it (0.1 s),
# else torch's (an import and a CUDA start: 3-4 s on an H200 host, paid by every restart).
if [[ -z "${CUDA_VISIBLE_DEVICES+set}" && -z "${PMNET_FORCE_GPU_PROBE:-}" ]] && command -v nvidia-smi > /dev/null 2>&1 \
    && listed="$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)"; then
    NGPU="$(grep -c '[0-9]' <<< "$listed" || true)"
elif compgen -G "/dev/nvidia[0-9]*" > /dev/null || command -v nvidia-smi > /dev/null 2>&1 \
    || [[ -n "${CUDA_VISIBLE_DEVICES:-}" || -n "${PMNET_FORCE_GPU_PROBE:-}" ]]; then
    NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)"
fi
if [[ "$NGPU" -gt 0 ]]; then
    PER_NODE="${GPUS:-$NGPU}"
    [[ "$PER_NODE" =~ ^[1-9][0-9]*$ && "$PER_NODE" -le "$NGPU" ]] || die "--gpus $PER_NODE: this node has $NGPU GPU(s)"
    DEVICE="cuda"
else
    PER_NODE="$CPU_RANKS"
    DEVICE="cpu"
    export DS_ACCELERATOR=cpu
    # one thread pool per rank, not one per core per rank
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / PER_NODE > 0 ? $(nproc) / PER_NODE : 1 ))}"
fi

# ---------------------------------------------------------------- layout
# Port 0: the OS hands out a port no socket uses (a scan from a fixed start is won by every job
# that starts at the same time). A given port is checked as the rendezvous server binds it:
# SO_REUSEADDR (a TIME_WAIT leftover is no conflict) and listen on every address.
port_tool() {
    "$PY" -c '
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("", int(sys.argv[1])))
        s.listen()
    except OSError as err:
        sys.exit(err.strerror)
    print(s.getsockname()[1])
' "$1"
}
SINGLE=0
if [[ "$SLURM" == 1 ]]; then
    [[ -n "${SLURM_JOB_NODELIST:-}" && -n "${SLURM_NODEID:-}" && -n "${SLURM_NNODES:-}" ]] \
        || die "--slurm needs SLURM_JOB_NODELIST, SLURM_NODEID and SLURM_NNODES (run it under srun)"
    if command -v scontrol >/dev/null 2>&1; then
        mapfile -t HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    else
        IFS=',' read -r -a HOSTS <<< "$SLURM_JOB_NODELIST"
    fi
    NUM_NODES="$SLURM_NNODES"
    NODE_RANK_ARG="$SLURM_NODEID"
    M_ADDR="${M_ADDR:-${HOSTS[0]}}"
    [[ ${#HOSTS[@]} -eq "$NUM_NODES" ]] || die "SLURM_JOB_NODELIST has ${#HOSTS[@]} hosts but SLURM_NNODES=$NUM_NODES"
fi

RUNNER=("$PY" -u -m deepspeed.launcher.runner)
if [[ -n "$NODE_RANK_ARG" ]]; then
    # no-ssh multi-node: this launch starts only this node's ranks; node 0 hosts the rendezvous
    NUM_NODES="${NUM_NODES:-1}"
    [[ "$NODE_RANK_ARG" =~ ^[0-9]+$ && "$NODE_RANK_ARG" -lt "$NUM_NODES" ]] \
        || die "--node-rank=$NODE_RANK_ARG must be in [0, num-nodes=$NUM_NODES)"
    [[ -n "$M_ADDR" ]] || die "--master-addr (the address of node 0) is needed with --node-rank"
    if [[ -z "$HOSTFILE" ]]; then
        HOSTFILE="$(mktemp "${TMPDIR:-/tmp}/pmnet-hostfile.XXXXXX")"
        TMP_FILES+=("$HOSTFILE")
        for ((n = 0; n < NUM_NODES; n++)); do
            echo "${HOSTS[$n]:-node$n} slots=$PER_NODE" >> "$HOSTFILE"
        done
    fi
    RUNNER+=(--hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK_ARG" --master_addr "$M_ADDR")
    WORLD=$(awk '/slots=/ { split($2, a, "="); s += a[2] } END { print s }' "$HOSTFILE")
elif [[ -n "$HOSTFILE" ]]; then
    [[ -f "$HOSTFILE" ]] || die "hostfile '$HOSTFILE' not found"
    # Ranks started over ssh see only what DeepSpeed exports: NCCL_*, PYTHON*, UCX*, MV2*, MLFLOW*
    # and the lines of a .deepspeed_env. Forward ours as well (PMNET_*, TORCH_*, TORCHINDUCTOR_*,
    # TRITON_*, NVSHMEM_*, OMP_*: e.g. TORCH_SYMM_MEM_DISABLE_MULTICAST / NVSHMEM_DISABLE_NVLS where
    # a cluster requires them) and the names listed in PMNET_EXPORT_ENV, through DS_ENV_FILE;
    # an existing ~/.deepspeed_env or ./.deepspeed_env is kept.
    ENV_FILE="$(mktemp "${TMPDIR:-/tmp}/pmnet-dsenv.XXXXXX")"
    TMP_FILES+=("$ENV_FILE")
    for f in "$HOME/.deepspeed_env" "./.deepspeed_env"; do
        if [[ -f "$f" ]]; then grep -v '^[[:space:]]*$' "$f" >> "$ENV_FILE" || true; fi
    done
    EXPORTED=()
    for name in $(compgen -e | grep -E '^(PMNET_|TORCH_|TORCHINDUCTOR_|TRITON_|NVSHMEM_|OMP_)' || true) ${PMNET_EXPORT_ENV:-}; do
        [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "PMNET_EXPORT_ENV: '$name' is not a variable name"
        [[ -v "$name" ]] || die "PMNET_EXPORT_ENV names $name, which is not set"
        [[ "${!name}" != *$'\n'* ]] || continue  # DeepSpeed's env file is one line per variable
        printf '%s=%s\n' "$name" "${!name}" >> "$ENV_FILE"
        EXPORTED+=("$name")
    done
    export DS_ENV_FILE="$ENV_FILE"
    RUNNER+=(--hostfile "$HOSTFILE")
    [[ -n "$NUM_NODES" ]] && RUNNER+=(--num_nodes "$NUM_NODES")
    [[ -n "$M_ADDR" ]] && RUNNER+=(--master_addr "$M_ADDR")
    WORLD=$(awk '/slots=/ { split($2, a, "="); s += a[2]; n++; if (lim && n >= lim) exit } END { print s }' lim="${NUM_NODES:-0}" "$HOSTFILE")
else
    SINGLE=1
    if [[ "$PORT_GIVEN" == 0 ]]; then
        # PMNET_TEST_FIRST_PORT (tests only): the first attempt uses this port as if it were picked
        M_PORT="${PMNET_TEST_FIRST_PORT:-$(port_tool 0)}" || die "no free TCP port for the rendezvous"
    else
        why="$(port_tool "$M_PORT" 2>&1)" \
            || die "rendezvous port $M_PORT ($PORT_SRC) is in use on this machine ($why); give a free one, or none (a free port is then picked)"
    fi
    # One node: DeepSpeed's per-node launcher directly, with the world DeepSpeed's runner would
    # hand it (the runner only adds a Python start with DeepSpeed's imports: ~4 s on an H200 host).
    # The ranks' devices: the first PER_NODE of CUDA_VISIBLE_DEVICES when set, else 0..PER_NODE-1;
    # the launcher sets CUDA_VISIBLE_DEVICES for the ranks from this list.
    IDS=()
    if [[ "$DEVICE" == cuda && -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        IFS=',' read -r -a IDS <<< "$CUDA_VISIBLE_DEVICES"
        for id in "${IDS[@]}"; do
            [[ "$id" =~ ^[0-9]+$ ]] || die "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES: give GPU indices (got '$id')"
        done
        [[ "${#IDS[@]}" -ge "$PER_NODE" ]] || die "--gpus $PER_NODE but CUDA_VISIBLE_DEVICES lists ${#IDS[@]}"
        IDS=("${IDS[@]:0:$PER_NODE}")
    else
        for ((i = 0; i < PER_NODE; i++)); do IDS+=("$i"); done
    fi
    WORLD_INFO="$(IFS=','; printf '{"localhost": [%s]}' "${IDS[*]}" | base64 -w0 | tr '+/' '-_')"
    RUNNER=(env -u CUDA_VISIBLE_DEVICES "$PY" -u -m deepspeed.launcher.launch "--world_info=$WORLD_INFO"
            --master_addr 127.0.0.1)
    WORLD="$PER_NODE"
fi
layout() {
    if [[ "$SINGLE" == 1 ]]; then
        LAYOUT="single node: $PER_NODE $DEVICE rank(s), master 127.0.0.1:$M_PORT"
    elif [[ -n "$NODE_RANK_ARG" ]]; then
        LAYOUT="no-ssh multi-node: node $NODE_RANK_ARG of $NUM_NODES, $PER_NODE $DEVICE rank(s) here, $WORLD in all, master $M_ADDR:$M_PORT"
    else
        LAYOUT="multi-node over ssh (pdsh) from $HOSTFILE: $WORLD rank(s), master port $M_PORT"
    fi
    CMD=("${RUNNER[@]}" --master_port "$M_PORT" --module pmnet.train "${ARGS[@]}" ${ALLOW[@]+"${ALLOW[@]}"})
}
layout

if [[ "$DRY" == 1 ]]; then
    "$PY" -m pmnet.train "${ARGS[@]}" ${ALLOW[@]+"${ALLOW[@]}"} --dry-run --world-size "$WORLD"
    echo
    echo "# world layout"
    echo "$LAYOUT"
    [[ "$DEVICE" == cpu ]] && echo "OMP_NUM_THREADS=$OMP_NUM_THREADS per rank (gloo)"
    [[ -n "${ENV_FILE:-}" ]] && echo "exported to every node (DS_ENV_FILE): ${EXPORTED[*]:-(none beyond the DeepSpeed defaults)}"
    echo
    echo "# command"
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi

# Pre-flight before any rank starts or the run directory exists: a bad config, a missing or
# mismatched data stream, a refused resume is one line here, not one per rank after the launch.
"$PY" -m pmnet.train.preflight "${ARGS[@]}" ${ALLOW[@]+"${ALLOW[@]}"} --world-size "$WORLD"
export PMNET_PREFLIGHT_REPORTED=1  # the ranks repeat the checks quietly

# ---------------------------------------------------------------- run, forwarding stop signals
# The launcher runs in its own session, so signals sent to this script's process group (timeout,
# a terminal's Ctrl-C, SLURM) reach only this script, which turns them into a graceful stop:
# DeepSpeed's launcher would otherwise SIGKILL the ranks 30 s after a SIGTERM (possibly in the
# middle of a checkpoint) and exit 1.
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}
STOPS=0
forward_stop() {
    local pid
    STOPS=$((STOPS + 1))
    if [[ "$1" == INT && "$STOPS" -gt 1 ]]; then
        echo "pretrain.sh: second interrupt: terminating the ranks without a checkpoint" >&2
        for pid in $(descendants "$LAUNCH_PID"); do kill -TERM "$pid" 2>/dev/null || true; done
        return
    fi
    echo "pretrain.sh: SIG$1: the ranks checkpoint at the next step boundary and exit (Ctrl-C twice: no checkpoint)" >&2
    for pid in $(descendants "$LAUNCH_PID"); do
        if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-m pmnet.train"; then
            kill -USR1 "$pid" 2>/dev/null || true
        fi
    done
}
trap 'forward_stop TERM' TERM
trap 'forward_stop USR1' USR1
trap 'forward_stop INT' INT
# A picked port can still be taken by another process before rank 0 binds it: rank 0 then
# writes it to this file and exits, and the launch is repeated on a fresh port.
ATTEMPTS=1
if [[ "$SINGLE" == 1 && "$PORT_GIVEN" == 0 ]]; then
    ATTEMPTS=3
    PMNET_PORT_IN_USE_FILE="$(mktemp "${TMPDIR:-/tmp}/pmnet-port.XXXXXX")"
    TMP_FILES+=("$PMNET_PORT_IN_USE_FILE")
    export PMNET_PORT_IN_USE_FILE
fi
for ((attempt = 1; ; attempt++)); do
    if [[ -n "${PMNET_PORT_IN_USE_FILE:-}" ]]; then : > "$PMNET_PORT_IN_USE_FILE"; fi
    echo "pretrain.sh: $LAYOUT"
    setsid -w "${CMD[@]}" &
    LAUNCH_PID=$!
    set +e
    while kill -0 "$LAUNCH_PID" 2>/dev/null; do
        wait "$LAUNCH_PID"  # returns early (> 128) when a trapped signal arrives; then wait again
    done
    wait "$LAUNCH_PID"  # the launcher's exit status
    RC=$?
    set -e
    if [[ -n "${PMNET_PORT_IN_USE_FILE:-}" && -s "$PMNET_PORT_IN_USE_FILE" ]]; then
        if [[ "$STOPS" -gt 0 ]]; then break; fi
        if [[ "$attempt" -ge "$ATTEMPTS" ]]; then
            echo "pretrain.sh: error: the rendezvous port was taken by another process before rank 0 could bind it, $attempt times in a row; give a free --master-port" >&2
            break
        fi
        LOST="$M_PORT"
        M_PORT="$(port_tool 0)" || die "no free TCP port for the rendezvous"
        layout
        echo "pretrain.sh: rendezvous port $LOST was taken by another process before rank 0 bound it; relaunching on port $M_PORT" >&2
        continue
    fi
    break
done
exit "$RC"
