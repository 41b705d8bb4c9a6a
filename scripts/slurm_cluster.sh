#!/usr/bin/env bash
# A two-node SLURM cluster on this one machine, for trying and testing the SLURM paths for real.
#
#   scripts/slurm_cluster.sh up      install slurm-wlm + munge if missing, start munge,
#                                    slurmctld and two slurmd nodes (n1, n2), wait until idle
#   scripts/slurm_cluster.sh down    stop exactly the processes `up` started
#   scripts/slurm_cluster.sh status  sinfo of the local cluster, or why it is not up
#
# Everything lives in one folder of its own, $MNISTLAB_SLURM_DIR (default logs/slurm/): config,
# munge key and socket, state, spool, pid files, logs. The system's /etc/slurm and /etc/munge are
# never touched. SLURM's commands find the cluster through SLURM_CONF, which `up` prints:
#   export SLURM_CONF=<dir>/slurm.conf
# The nodes are named n1 and n2, both at 127.0.0.1, each with one CPU. DDP's rendezvous resolves
# the first node's name (MASTER_ADDR from SLURM_NODELIST), so `up` adds "127.0.0.1 n1 n2" to
# /etc/hosts, marked, when they do not resolve, and `down` removes that line again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$(mkdir -p "${MNISTLAB_SLURM_DIR:-$ROOT/logs/slurm}" && cd "${MNISTLAB_SLURM_DIR:-$ROOT/logs/slurm}" && pwd)"
NODES=(n1 n2)
CTLD_PORT="${MNISTLAB_SLURM_PORT:-16817}"   # slurmctld; the nodes take the next ports
HOSTS_MARK="# mnistlab local slurm cluster"
export SLURM_CONF="$DIR/slurm.conf"

say() { echo "slurm_cluster: $*"; }
die() { echo "slurm_cluster: error: $*" >&2; exit 1; }

install_if_missing() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed; run as root, or: sudo apt-get install slurm-wlm munge"
  say "installing slurm-wlm and munge (apt-get, about 20 s)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) \
    >"$DIR/apt.log" 2>&1 || die "apt-get install slurm-wlm munge failed: see $DIR/apt.log"
}

write_config() {
  mkdir -p "$DIR/munge" "$DIR/state" "$DIR/log"
  chmod 700 "$DIR/munge"
  if [ ! -s "$DIR/munge/munge.key" ]; then
    head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
  fi
  local cpus mem port lines="" i=0
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 4 ))  # MB per node: a quarter each
  for node in "${NODES[@]}"; do
    i=$((i + 1)); port=$((CTLD_PORT + i))
    mkdir -p "$DIR/spool/$node"
    lines+="NodeName=$node NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$port CPUs=1 RealMemory=$mem State=UNKNOWN"$'\n'
  done
  cat >"$SLURM_CONF" <<EOF
# Written by scripts/slurm_cluster.sh: a two-node cluster on this machine (do not edit; rewritten by 'up').
ClusterName=mnistlab
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
EnforcePartLimits=ALL
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=60
$lines
PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
}

resolve_nodes() {
  local node missing=0
  for node in "${NODES[@]}"; do getent hosts "$node" >/dev/null || missing=1; done
  [ "$missing" = 0 ] && return
  [ -w /etc/hosts ] || die "node names ${NODES[*]} do not resolve and /etc/hosts is not writable: add '127.0.0.1 ${NODES[*]}' to it"
  echo "127.0.0.1 ${NODES[*]} $HOSTS_MARK" >>/etc/hosts
}

pid_of() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && cat "$1"; }

up() {
  install_if_missing
  if pid_of "$DIR/slurmctld.pid" >/dev/null; then
    say "already up"; status; return
  fi
  write_config
  resolve_nodes
  munged --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munge.seed" --force \
    || die "munged did not start: see $DIR/log/munged.log"
  slurmctld -c -f "$SLURM_CONF" || die "slurmctld did not start: see $DIR/log/slurmctld.log"
  for node in "${NODES[@]}"; do
    slurmd -N "$node" -f "$SLURM_CONF" || die "slurmd $node did not start: see $DIR/log/slurmd.$node.log"
  done
  local i
  for i in $(seq 60); do
    if [ "$(sinfo -h -N -o '%t' 2>/dev/null | grep -c '^idle')" = "${#NODES[@]}" ]; then
      say "up: ${#NODES[@]} idle nodes (${NODES[*]}), partition debug"
      echo "export SLURM_CONF=$SLURM_CONF"
      return
    fi
    sleep 1
  done
  sinfo -N >&2 || true
  die "the nodes did not become idle within 60 s: see $DIR/log/"
}

down() {
  local f pid stopped=0
  for f in "$DIR"/slurmd.*.pid "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if pid=$(pid_of "$f"); then
      kill "$pid" && stopped=$((stopped + 1))
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$f"
  done
  if [ -w /etc/hosts ] && grep -q "$HOSTS_MARK" /etc/hosts; then
    grep -v "$HOSTS_MARK" /etc/hosts >"$DIR/hosts.tmp" && cat "$DIR/hosts.tmp" >/etc/hosts
    rm -f "$DIR/hosts.tmp"
  fi
  say "down: stopped $stopped process(es) of ours"
}

status() {
  pid_of "$DIR/slurmctld.pid" >/dev/null || { say "not up (scripts/slurm_cluster.sh up)"; return 1; }
  sinfo -N
  echo "export SLURM_CONF=$SLURM_CONF"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
