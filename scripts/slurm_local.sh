#!/usr/bin/env bash
# A real single-node Slurm on this machine (Debian's slurm-wlm + munge, run as root without
# systemd), for trying vqlab's Slurm launcher and for its tests.
#
#   eval "$(bash scripts/slurm_local.sh start)"   # starts munged, slurmctld, slurmd; exports SLURM_CONF
#   vqlab run experiments/quickstart.toml --launcher slurm --wait
#   bash scripts/slurm_local.sh stop
#
# Everything Slurm writes (state, spool, logs, pid files, slurm.conf) lives under
# $VQLAB_SLURM_DIR (default /tmp/vqlab-slurm). Needs root (apt-get, munge key, daemons).
set -euo pipefail
D="${VQLAB_SLURM_DIR:-/tmp/vqlab-slurm}"
HOST="$(hostname -s)"
CONF="$D/slurm.conf"

log() { echo "$*" >&2; }

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  log "installing slurm-wlm and munge"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
  chmod 400 /etc/munge/munge.key
  chmod 755 /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- munged
  fi
}

write_conf() {
  mkdir -p "$D/state" "$D/spool"
  local cpus mem
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  cat >"$CONF" <<CONF
ClusterName=vqlab
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
KillWait=30
MinJobAge=600
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  [ "$(id -u)" -eq 0 ] || { log "slurm_local.sh needs root"; exit 1; }
  install_packages
  start_munge
  write_conf
  export SLURM_CONF="$CONF"
  stop_daemons quiet
  slurmctld
  slurmd
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
      log "single-node Slurm up: $(sinfo -h -o '%P %D %T %C' | head -1) (SLURM_CONF=$CONF)"
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 1
  done
  log "Slurm did not come up; logs: $D/slurmctld.log $D/slurmd.log"
  tail -20 "$D/slurmctld.log" "$D/slurmd.log" >&2 || true
  exit 1
}

stop_daemons() {
  for f in "$D/slurmd.pid" "$D/slurmctld.pid"; do
    if [ -s "$f" ]; then
      kill "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    fi
  done
  [ "${1:-}" = quiet ] || log "Slurm daemons stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons ;;
  *) log "usage: $0 start|stop"; exit 2 ;;
esac
