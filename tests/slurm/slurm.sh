#!/usr/bin/env bash
# A private single-node SLURM on the loopback interface, for tests and CI.
#
#   tests/slurm/slurm.sh start DIR    write DIR/slurm.conf + gres.conf, start munged, slurmctld and
#                                     slurmd (pid files, logs and state all under DIR), wait for idle
#   tests/slurm/slurm.sh stop DIR     stop exactly the daemons whose pid files are in DIR
#   tests/slurm/slurm.sh env DIR      print the exports that point clients at it (eval "$(... env DIR)"):
#                                     SLURM_CONF=DIR/slurm.conf and PATH=DIR/bin:$PATH
#
# Installs nothing. Needs root and, on Debian 12 (SLURM 22.05), what .ci/run installs:
#   apt-get install -y munge slurmctld slurmd slurm-client
#   pip install snakemake-executor-plugin-slurm
# Clients (sbatch, squeue, sinfo, srun) find this cluster through SLURM_CONF=DIR/slurm.conf; nothing
# under /etc is written or read (own munge key and socket in DIR/munge, own ports).
# DIR/bin/srun is a shim that re-exports SLURM_CONF: snakemake-executor-plugin-slurm-jobstep (0.6.1)
# drops every SLURM_* variable, SLURM_CONF included, before its `srun` inside a job, and srun then
# looks for /etc/slurm/slurm.conf (a real cluster has that, or a configless slurmd: no shim needed).
#
# The node has CPUs=$(nproc), RealMemory a bit under the available memory, and one fake GPU
# (gres.conf File=/dev/null) so that `--gpus=1` jobs schedule (they see CUDA_VISIBLE_DEVICES=0).
# Partitions: `main` (default) and `gpu`, both on the one node, so the real profile's partition
# routing (profiles/slurm) is exercised unchanged. Accounting is off: use `squeue` for job status.
# Environment overrides: SLURM_TEST_CPUS, SLURM_TEST_MEM_MB, SLURM_TEST_TIMEOUT (s, default 60).
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 1; }

usage() { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

[[ $# -eq 2 ]] || usage
cmd=$1
[[ $cmd == start ]] && mkdir -p "$2"
[[ -d $2 ]] || die "no such directory: $2"
dir=$(cd "$2" && pwd)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

dump_logs() {
    local f
    for f in "$dir"/munged.log "$dir"/slurmctld.log "$dir"/slurmd.log; do
        [[ -f $f ]] || continue
        echo "----- $f (last 40 lines) -----" >&2
        tail -n 40 "$f" >&2
    done
}

stop_pid_file() {  # stop_pid_file NAME: TERM the pid in DIR/NAME.pid (if it is still NAME), then KILL
    local pidf="$dir/$1.pid" pid i
    [[ -f $pidf ]] || return 0
    pid=$(cat "$pidf" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidf"
}

start() {
    local m
    for m in munged slurmctld slurmd sinfo sbatch squeue; do
        command -v "$m" >/dev/null || [[ -x /usr/sbin/$m ]] || die "$m not found; install with:
  apt-get install -y munge slurmctld slurmd slurm-client"
    done
    [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd launches jobs as their user)"
    [[ -f $dir/slurmctld.pid ]] && die "$dir/slurmctld.pid exists: already started? run: $0 stop $dir"
    export PATH="$PATH:/usr/sbin"

    local cpus mem ctld_port d_port
    cpus=${SLURM_TEST_CPUS:-$(nproc)}
    # RealMemory: 90 % of what is available now (a node claiming more than it has goes INVALID).
    mem=${SLURM_TEST_MEM_MB:-$(awk '/^MemAvailable:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)}
    ctld_port=$(free_port)
    d_port=$(free_port)
    while [[ $d_port == "$ctld_port" ]]; do d_port=$(free_port); done

    mkdir -p "$dir/ctld" "$dir/d" "$dir/munge"
    chmod 0711 "$dir/munge"   # socket reachable by all, key file itself 0400

    cat >"$dir/slurm.conf" <<EOF
# Written by tests/slurm/slurm.sh: single-node test cluster on 127.0.0.1, accounting off.
ClusterName=etemseg
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
# keep finished jobs visible to squeue (the executor's status command) for 5 minutes
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
# trust the numbers below (CPUs may be fewer than the hardware threads slurmd detects)
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost Default=NO MaxTime=INFINITE State=UP
EOF
    cat >"$dir/gres.conf" <<EOF
# one fake GPU: jobs asking --gpus=1 / --gres=gpu:1 schedule and get CUDA_VISIBLE_DEVICES=0
NodeName=localhost Name=gpu File=/dev/null
EOF

    local real_srun
    real_srun=$(PATH=${PATH//"$dir/bin:"/} command -v srun) || die "srun not found (package slurm-client)"
    mkdir -p "$dir/bin"
    cat >"$dir/bin/srun" <<EOF
#!/bin/sh
# shim from tests/slurm/slurm.sh: the slurm-jobstep executor strips SLURM_CONF before calling srun
export SLURM_CONF="$dir/slurm.conf"
exec $real_srun "\$@"
EOF
    chmod 0755 "$dir/bin/srun"

    if [[ ! -s $dir/munge/munge.key ]]; then
        (umask 077 && head -c 1024 /dev/urandom >"$dir/munge/munge.key")
    fi
    chmod 0400 "$dir/munge/munge.key"

    export SLURM_CONF="$dir/slurm.conf"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket.2" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
        --seed-file="$dir/munge/munged.seed" \
        || { dump_logs; die "munged failed to start"; }
    slurmctld -f "$dir/slurm.conf" || { dump_logs; "$0" stop "$dir"; die "slurmctld failed to start"; }
    slurmd -f "$dir/slurm.conf" -N localhost || { dump_logs; "$0" stop "$dir"; die "slurmd failed to start"; }

    local timeout=${SLURM_TEST_TIMEOUT:-60} t0 state=""
    t0=$(date +%s)
    while :; do
        state=$(sinfo -h -p main -o %t 2>/dev/null | head -n1 || true)
        [[ $state == idle ]] && break
        if (($(date +%s) - t0 >= timeout)); then
            dump_logs
            "$0" stop "$dir" || true
            die "node not idle after ${timeout}s (sinfo state: '${state:-no answer}')"
        fi
        sleep 0.5
    done
    echo "slurm.sh: single-node SLURM up in $(($(date +%s) - t0))s: CPUs=$cpus RealMemory=${mem}MB gpu:1," \
        "partitions main,gpu; to use it: eval \"\$($0 env $dir)\""
}

stop() {
    export SLURM_CONF="$dir/slurm.conf"
    # cancel what is still queued or running on this private cluster, so no job outlives it
    if [[ -f $dir/slurmctld.pid ]] && command -v scancel >/dev/null; then
        timeout 10 scancel --quiet --full $(timeout 10 squeue -h -o %i 2>/dev/null) 2>/dev/null || true
    fi
    # slurmd first (it owns running job steps), then the controller, then munge
    stop_pid_file slurmd
    stop_pid_file slurmctld
    stop_pid_file munged
}

case $cmd in
    start) start ;;
    stop) stop ;;
    env)
        echo "export SLURM_CONF=$dir/slurm.conf"
        echo "export PATH=$dir/bin:\$PATH"
        ;;
    *) usage ;;
esac
