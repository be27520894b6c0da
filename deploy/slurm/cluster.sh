#!/bin/sh
# A single-node Slurm cluster on this machine, for trying c2i's `slurm` executor and
# for its tests: Debian's `slurm-wlm` and `munge` packages, slurmctld + slurmd on
# 127.0.0.1, run as root, without cgroups (proctrack/linuxproc, task/none, no
# accounting). Everything lives in STATE_DIR: the config, a private munge key and
# socket, spool, state, logs and pid files; nothing under /etc is changed, so it can
# run beside a real Slurm or another instance of itself (ports are picked free).
#
#   cluster.sh install            apt-get install slurm-wlm munge, if missing
#   cluster.sh start STATE_DIR    install if needed, write STATE_DIR/slurm.conf, start
#                                 munged, slurmctld and slurmd, wait until the node is
#                                 idle; prints `SLURM_CONF=STATE_DIR/slurm.conf`
#   cluster.sh stop STATE_DIR     stop all three (also run by the watchdog)
#   cluster.sh status STATE_DIR   sinfo and squeue against this cluster
#
# Client commands (sbatch, squeue, scancel, sinfo) find the cluster through
# SLURM_CONF=STATE_DIR/slurm.conf. With C2I_SLURM_WATCH_PID=PID, a watchdog stops the
# cluster when that process is gone (so a killed test leaves no daemons behind).
set -eu

die() { echo "cluster.sh: $*" >&2; exit 1; }

install() {
    missing=""
    for b in slurmctld slurmd sbatch squeue scancel sinfo munged; do
        command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || missing="$missing $b"
    done
    [ -z "$missing" ] && return 0
    [ "$(id -u)" = 0 ] || die "missing$missing; install slurm-wlm and munge as root (apt-get install slurm-wlm munge)"
    echo "cluster.sh: installing slurm-wlm and munge (missing:$missing)" >&2
    # One install at a time on a machine (apt's own lock would fail the second one).
    exec 9>/tmp/c2i-slurm-apt.lock
    flock 9
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >&2; } ||
        die "apt-get install slurm-wlm munge failed"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # seconds, description, command...
    t=$1; what=$2; shift 2
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -gt $((t * 10)) ] && return 1
        sleep 0.1
    done
    return 0
}

start() {
    s=$1
    install
    export PATH="$PATH:/usr/sbin:/sbin"
    mkdir -p "$s"
    s=$(cd "$s" && pwd)
    chmod 700 "$s"
    mkdir -p "$s/ctld" "$s/spool"
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
    if [ ! -f "$s/munge.key" ]; then
        dd if=/dev/urandom of="$s/munge.key" bs=1024 count=1 2>/dev/null
        chmod 600 "$s/munge.key"
    fi
    munged --force --socket="$s/munge.socket" --key-file="$s/munge.key" \
        --pid-file="$s/munged.pid" --log-file="$s/munged.log" --seed-file="$s/munge.seed" ||
        die "munged did not start: $(tail -5 "$s/munged.log" 2>/dev/null)"
    ctld_port=$(free_port)
    d_port=$(free_port)
    while [ "$d_port" = "$ctld_port" ]; do d_port=$(free_port); done
    cat >"$s/slurm.conf" <<CONF
# Written by c2i's deploy/slurm/cluster.sh: a single node, as root, no cgroups.
ClusterName=c2i
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$s/munge.socket
StateSaveLocation=$s/ctld
SlurmdSpoolDir=$s/spool
SlurmctldPidFile=$s/slurmctld.pid
SlurmdPidFile=$s/slurmd.pid
SlurmctldLogFile=$s/slurmctld.log
SlurmdLogFile=$s/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
PlugStackConfig=$s/plugstack.conf
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=c2i Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    : >"$s/plugstack.conf"
    export SLURM_CONF="$s/slurm.conf"
    slurmctld -c -f "$s/slurm.conf" || die "slurmctld did not start: $(tail -5 "$s/slurmctld.log" 2>/dev/null)"
    slurmd -f "$s/slurm.conf" || die "slurmd did not start: $(tail -5 "$s/slurmd.log" 2>/dev/null)"
    if [ -n "${C2I_SLURM_WATCH_PID:-}" ]; then
        self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
        nohup sh -c "while kill -0 $C2I_SLURM_WATCH_PID 2>/dev/null; do sleep 1; done; '$self' stop '$s'" \
            >/dev/null 2>&1 &
        echo $! >"$s/watchdog.pid"
    fi
    wait_for 60 "an idle node" sh -c "sinfo -h -o %T | grep -qx idle" ||
        die "the node did not become idle: $(sinfo 2>&1); slurmd log: $(tail -5 "$s/slurmd.log")"
    echo "SLURM_CONF=$s/slurm.conf"
}

stop_pid() { # pidfile
    [ -f "$1" ] || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}

stop() {
    s=$1
    [ -d "$s" ] || return 0
    export PATH="$PATH:/usr/sbin:/sbin"
    if [ -f "$s/slurm.conf" ]; then
        SLURM_CONF="$s/slurm.conf" scancel --full --quiet --user root 2>/dev/null || true
    fi
    stop_pid "$s/slurmd.pid"
    stop_pid "$s/slurmctld.pid"
    stop_pid "$s/munged.pid"
    if [ -f "$s/watchdog.pid" ]; then
        w=$(cat "$s/watchdog.pid")
        rm -f "$s/watchdog.pid"
        [ "$w" != "$$" ] && [ "$w" != "$PPID" ] && kill "$w" 2>/dev/null || true
    fi
}

cmd=${1:-}
case "$cmd" in
install) install ;;
start) [ $# -eq 2 ] || die "usage: cluster.sh start STATE_DIR"; start "$2" ;;
stop) [ $# -eq 2 ] || die "usage: cluster.sh stop STATE_DIR"; stop "$2" ;;
status)
    [ $# -eq 2 ] || die "usage: cluster.sh status STATE_DIR"
    export SLURM_CONF="$2/slurm.conf"
    sinfo && squeue
    ;;
*) die "usage: cluster.sh install | start STATE_DIR | stop STATE_DIR | status STATE_DIR" ;;
esac
