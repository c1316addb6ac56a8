#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to try `python -m apga.sweep --executor slurm` (and for
# the tests marked `slurm`): Debian's slurm-wlm and munge, no systemd, no cgroups, no accounting
# database.
#
#   scripts/local_slurm.sh start    install the packages where missing (apt-get), write the config,
#                                   start munged, slurmctld and slurmd, wait until the node is idle
#   scripts/local_slurm.sh stop     stop the three daemons
#   scripts/local_slurm.sh status   say whether they run
#
# Everything lives in one folder of its own, $APGA_SLURM_DIR (default /var/tmp/apga-slurm): the
# config (slurm.conf), the munge key and socket, Slurm's state and spool, the daemons' logs, and
# env.sh, which sets SLURM_CONF for Slurm's commands:
#
#   . /var/tmp/apga-slurm/env.sh        (or: export SLURM_CONF=/var/tmp/apga-slurm/slurm.conf)
#
# Run it as root (apt-get, and slurmd launches the jobs). The node has this machine's cores
# (nproc) and its memory; one partition, `local`, the default. Without an accounting database
# `sacct` cannot answer: the controller keeps finished jobs for a day instead (MinJobAge), and
# `squeue --states=all` shows them (the sweep's --status reads that). Short delays for requeues and
# scheduling make a test cluster quick. Ports: $APGA_SLURM_PORT and the next (default 6817, 6818).
set -euo pipefail

DIR=${APGA_SLURM_DIR:-/var/tmp/apga-slurm}
PORT=${APGA_SLURM_PORT:-6817}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)

say() { echo "local_slurm: $*" >&2; }
die() { say "$*"; exit 1; }

apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]} (apt-get); rerun with sudo"
    say "installing ${missing[*]} (apt-get)"
    # no service may start while installing (a container has no init; the daemons are started below)
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy && own_policy=1; fi
    local log status=0
    log=$(mktemp)
    apt_install "${missing[@]}" >"$log" 2>&1 || { apt-get update -qq >>"$log" 2>&1 && apt_install "${missing[@]}" >>"$log" 2>&1; } \
        || status=$?
    [ $own_policy -eq 1 ] && rm -f $policy
    [ $status -eq 0 ] || { cat "$log" >&2; rm -f "$log"; die "apt-get could not install ${missing[*]}"; }
    rm -f "$log"
}

memory_mb() {  # this machine's memory (or its container's limit), less a little for the daemons
    local total limit
    total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    for file in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
        limit=$(cat $file 2>/dev/null || true)
        if [[ $limit =~ ^[0-9]+$ ]] && [ $((limit / 1048576)) -lt "$total" ]; then total=$((limit / 1048576)); fi
    done
    echo $((total * 95 / 100))
}

write_config() {
    mkdir -p "$DIR"/{state,spool,log,run,munge}
    chmod 755 "$DIR"
    chown munge:munge "$DIR/munge"
    chmod 755 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
    cat > "$CONF" <<EOF
# Written by scripts/local_slurm.sh: a one-node cluster on $HOST.
ClusterName=apga-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
EnforcePartLimits=ALL
SwitchType=switch/none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
# finished jobs stay known to squeue for a day (there is no sacct here)
MinJobAge=86400
# seconds between SIGTERM and SIGKILL (scancel, requeue, time limit)
KillWait=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(memory_mb) State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    printf 'export SLURM_CONF=%s\n' "$CONF" > "$DIR/env.sh"
}

running() {  # is the daemon of this pid file alive?
    local pid
    pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start() {
    install_packages
    [ "$(id -u)" -eq 0 ] || die "needs root (munged runs as the munge user, slurmd as root)"
    write_config
    export SLURM_CONF=$CONF
    if ! running "$DIR/munge/munged.pid"; then
        runuser -u munge -- munged --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
            --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
    fi
    running "$DIR/run/slurmctld.pid" || slurmctld -f "$CONF"
    running "$DIR/run/slurmd.pid" || slurmd -f "$CONF"
    local state=""
    for _ in $(seq 120); do
        state=$(sinfo -h -N -o %T 2>/dev/null | head -1)
        case $state in
            idle|mixed|allocated) break ;;
            drain*|down*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    case $state in
        idle|mixed|allocated) ;;
        *) die "the node is not idle after 60 s (sinfo: ${state:-no answer}); see $DIR/log/" ;;
    esac
    say "node $HOST is $state: $(sinfo -h -o '%c CPUs, %m MB' | head -1), partition local; logs in $DIR/log/"
    say "for Slurm's commands and the sweep:"
    echo "export SLURM_CONF=$CONF"
}

stop_daemon() {  # the daemon of this pid file, by its pid; wait until it is gone
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    if running "$DIR/run/slurmctld.pid" && running "$DIR/run/slurmd.pid"; then  # no job may outlive the cluster
        export SLURM_CONF=$CONF
        scancel --partition=local 2>/dev/null || true
        for _ in $(seq 60); do [ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    stop_daemon "$DIR/run/slurmd.pid"
    stop_daemon "$DIR/run/slurmctld.pid"
    stop_daemon "$DIR/munge/munged.pid"
    say "stopped"
}

status() {
    local name file
    for name in munged slurmctld slurmd; do
        file=$DIR/run/$name.pid
        [ $name = munged ] && file=$DIR/munge/munged.pid
        if running "$file"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: stopped"; fi
    done
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status   (folder: $DIR)" >&2; exit 2 ;;
esac
