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
#   --master-port P   rendezvous port                               [MASTER_PORT, default 29500;
#                     single node: the first free port from 29500 on, so two runs can share a machine]
#   --slurm           read the layout from SLURM_* variables
#   --dry-run         print config, parameter count, FLOPs/byte, world layout, DeepSpeed JSON, command
# SIGTERM, SIGUSR1 or Ctrl-C to this script (or its process group): every rank checkpoints at the
# next step boundary and the job exits 0; a second Ctrl-C stops without a checkpoint.
# The Python used is $PMNET_PYTHON, else `python` on PATH.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PMNET_PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
die() { echo "pretrain.sh: error: $*" >&2; exit 2; }

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
CPU_RANKS="${PMNET_CPU_RANKS:-1}"
GPUS="${PMNET_GPUS:-}"
HOSTFILE="${PMNET_HOSTFILE:-}"
NUM_NODES="${NNODES:-}"
NODE_RANK_ARG="${NODE_RANK:-}"
M_ADDR="${MASTER_ADDR:-}"
M_PORT="${MASTER_PORT:-29500}"
PORT_GIVEN=0; [[ -n "${MASTER_PORT:-}" ]] && PORT_GIVEN=1
SLURM=0
DRY=0
ARGS=()
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu-ranks) need_value "$@"; CPU_RANKS="$2"; shift 2 ;;
        --gpus) need_value "$@"; GPUS="$2"; shift 2 ;;
        --hostfile) need_value "$@"; HOSTFILE="$2"; shift 2 ;;
        --num-nodes) need_value "$@"; NUM_NODES="$2"; shift 2 ;;
        --node-rank) need_value "$@"; NODE_RANK_ARG="$2"; shift 2 ;;
        --master-addr) need_value "$@"; M_ADDR="$2"; shift 2 ;;
        --master-port) need_value "$@"; M_PORT="$2"; PORT_GIVEN=1; shift 2 ;;
        --slurm) SLURM=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
[[ ${#ARGS[@]} -ge 1 ]] || die "usage: bash launchers/pretrain.sh CONFIG [section.key=value ...] [--dry-run] (see --help)"
[[ -f "${ARGS[0]}" ]] || die "config file '${ARGS[0]}' not found"
for v in CPU_RANKS M_PORT; do [[ "${!v}" =~ ^[0-9]+$ ]] || die "--${v,,} must be a number, got '${!v}'"; done

# ---------------------------------------------------------------- devices on this node
NGPU=0
# the torch probe (an import, seconds) only where a GPU may exist
if compgen -G "/dev/nvidia[0-9]*" > /dev/null || command -v nvidia-smi > /dev/null 2>&1 \
    || [[ -n "${CUDA_VISIBLE_DEVICES:-}" || -n "${PMNET_FORCE_GPU_PROBE:-}" ]]; then
    NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)"
fi
if [[ "$NGPU" -gt 0 ]]; then
    PER_NODE="${GPUS:-$NGPU}"
    DEVICE="cuda"
else
    PER_NODE="$CPU_RANKS"
    DEVICE="cpu"
    export DS_ACCELERATOR=cpu
    # one thread pool per rank, not one per core per rank
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / PER_NODE > 0 ? $(nproc) / PER_NODE : 1 ))}"
fi

# ---------------------------------------------------------------- layout
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
        trap 'rm -f "$HOSTFILE"' EXIT
        for ((n = 0; n < NUM_NODES; n++)); do
            echo "${HOSTS[$n]:-node$n} slots=$PER_NODE" >> "$HOSTFILE"
        done
    fi
    RUNNER+=(--hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK_ARG" --master_addr "$M_ADDR" --master_port "$M_PORT")
    WORLD=$(awk '/slots=/ { split($2, a, "="); s += a[2] } END { print s }' "$HOSTFILE")
    LAYOUT="no-ssh multi-node: node $NODE_RANK_ARG of $NUM_NODES, $PER_NODE $DEVICE rank(s) here, $WORLD in all, master $M_ADDR:$M_PORT"
elif [[ -n "$HOSTFILE" ]]; then
    [[ -f "$HOSTFILE" ]] || die "hostfile '$HOSTFILE' not found"
    # Ranks started over ssh see only what DeepSpeed exports: NCCL_*, PYTHON*, UCX*, MV2*, MLFLOW*
    # and the lines of a .deepspeed_env. Forward ours as well (PMNET_*, TORCH_*, TORCHINDUCTOR_*,
    # TRITON_*, NVSHMEM_*, OMP_*: e.g. TORCH_SYMM_MEM_DISABLE_MULTICAST / NVSHMEM_DISABLE_NVLS where
    # a cluster requires them) and the names listed in PMNET_EXPORT_ENV, through DS_ENV_FILE;
    # an existing ~/.deepspeed_env or ./.deepspeed_env is kept.
    ENV_FILE="$(mktemp "${TMPDIR:-/tmp}/pmnet-dsenv.XXXXXX")"
    trap 'rm -f "$ENV_FILE"' EXIT
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
    RUNNER+=(--hostfile "$HOSTFILE" --master_port "$M_PORT")
    [[ -n "$NUM_NODES" ]] && RUNNER+=(--num_nodes "$NUM_NODES")
    [[ -n "$M_ADDR" ]] && RUNNER+=(--master_addr "$M_ADDR")
    WORLD=$(awk '/slots=/ { split($2, a, "="); s += a[2]; n++; if (lim && n >= lim) exit } END { print s }' lim="${NUM_NODES:-0}" "$HOSTFILE")
    LAYOUT="multi-node over ssh (pdsh) from $HOSTFILE: $WORLD rank(s), master port $M_PORT"
else
    if [[ "$PORT_GIVEN" == 0 ]]; then
        # a second run on this machine would otherwise die with EADDRINUSE at rendezvous
        M_PORT="$("$PY" -c '
import socket, sys
start = int(sys.argv[1])
for port in range(start, start + 200):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
else:
    print(start)
' "$M_PORT")"
    fi
    RUNNER+=(--master_port "$M_PORT")
    # with CUDA_VISIBLE_DEVICES set, DeepSpeed's runner uses exactly those GPUs unless --num_gpus is
    # given (it then drops the variable and counts from GPU 0)
    [[ "$DEVICE" == cuda && -n "${CUDA_VISIBLE_DEVICES:-}" && -z "$GPUS" ]] || RUNNER+=(--num_gpus "$PER_NODE")
    WORLD="$PER_NODE"
    LAYOUT="single node: $PER_NODE $DEVICE rank(s), master 127.0.0.1:$M_PORT"
fi
CMD=("${RUNNER[@]}" --module pmnet.train "${ARGS[@]}")

if [[ "$DRY" == 1 ]]; then
    "$PY" -m pmnet.train "${ARGS[@]}" --dry-run --world-size "$WORLD"
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

# Validate before starting ranks: a bad config is one line here, not one per rank.
"$PY" -m pmnet.train "${ARGS[@]}" --dry-run --world-size "$WORLD" > /dev/null

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
echo "pretrain.sh: $LAYOUT"
setsid -w "${CMD[@]}" &
LAUNCH_PID=$!
trap 'forward_stop TERM' TERM
trap 'forward_stop USR1' USR1
trap 'forward_stop INT' INT
set +e
while kill -0 "$LAUNCH_PID" 2>/dev/null; do
    wait "$LAUNCH_PID"  # returns early (> 128) when a trapped signal arrives; then wait again
done
wait "$LAUNCH_PID"  # the launcher's exit status
exit $?
