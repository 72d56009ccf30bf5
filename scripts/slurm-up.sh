#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (localhost), for tests and CI.
#
# Idempotent: installs Debian's slurm-wlm + munge only when missing, (re)writes
# /etc/slurm/slurm.conf, starts munged, slurmctld and slurmd only when they are not
# already running (restarting them when the config changed), and waits until `sinfo`
# shows the node idle.  Needs root and apt-get (Debian/Ubuntu).  No systemd needed:
# the daemons are started directly.
#
# Environment:
#   SLURM_UP_TIMEOUT   seconds to wait for the node to become idle (default 90)
#   SLURM_UP_MEM_MB    RealMemory of the node in MB (default: 90% of `free -m` total)
#   SLURM_UP_CPUS      CPUs of the node (default: nproc)
#   SLURM_UP_FORCE=1   overwrite an /etc/slurm/slurm.conf this script did not write
#
# Jobs run as root (SlurmUser=root); there is no accounting database, so use
# `squeue` (not `sacct`) for job status: snakemake needs
#   --slurm-no-account --slurm-status-command squeue
# (see tests/profiles/slurm-local/config.yaml and docs/slurm.md).
# Stop everything with scripts/slurm-down.sh.
set -euo pipefail

log() { echo "slurm-up: $*" >&2; }
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"

TIMEOUT=${SLURM_UP_TIMEOUT:-90}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
NODE=$(hostname -s)
CPUS=${SLURM_UP_CPUS:-$(nproc)}
if [[ -n ${SLURM_UP_MEM_MB:-} ]]; then
  MEM_MB=$SLURM_UP_MEM_MB
else
  # slurmd refuses (drains) a node whose RealMemory exceeds what it measures: leave slack.
  MEM_MB=$(free -m | awk '/^Mem:/ {printf "%d", $2 * 0.9}')
fi
# Default memory of a job that asks for none: without it a job would get the whole
# node and jobs could not run side by side under CR_CPU_Memory.
DEF_MEM_PER_CPU=$(( MEM_MB / (CPUS > 0 ? CPUS : 1) / 2 ))
(( DEF_MEM_PER_CPU > 0 )) || DEF_MEM_PER_CPU=100

# ---------------------------------------------------------------- packages
need_install=()
command -v slurmctld >/dev/null 2>&1 || need_install+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need_install+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need_install+=(slurm-client)
command -v munged >/dev/null 2>&1 || need_install+=(munge)
if ((${#need_install[@]})); then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install slurm-wlm and munge by hand"
  log "installing slurm-wlm munge (missing: ${need_install[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 \
    || die "apt-get install slurm-wlm munge failed"
fi
MUNGED=$(command -v munged || echo /usr/sbin/munged)
SLURMCTLD=$(command -v slurmctld || echo /usr/sbin/slurmctld)
SLURMD=$(command -v slurmd || echo /usr/sbin/slurmd)

# ---------------------------------------------------------------- munge
id munge >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin munge
install -d -m 0700 -o munge -g munge /etc/munge /var/lib/munge /var/log/munge
install -d -m 0755 -o munge -g munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  if [[ -x /usr/sbin/mungekey ]]; then
    /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key --force >&2
  elif [[ -x /usr/sbin/create-munge-key ]]; then
    /usr/sbin/create-munge-key -f >&2
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  log "starting munged"
  rm -f /run/munge/munged.pid
  if command -v runuser >/dev/null 2>&1; then
    runuser -u munge -- "$MUNGED" >&2 || die "munged failed to start (see /var/log/munge/munged.log)"
  else
    su -s /bin/sh munge -c "$MUNGED" >&2 || die "munged failed to start (see /var/log/munge/munged.log)"
  fi
  for _ in $(seq 50); do munge_ok && break; sleep 0.2; done
  munge_ok || die "munged is not answering (see /var/log/munge/munged.log)"
fi

# ---------------------------------------------------------------- slurm.conf
install -d -m 0755 "$CONF_DIR" /var/log/slurm /var/lib/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /run/slurm
new_conf=$(cat <<EOF
# Written by scripts/slurm-up.sh (stability): a one-node cluster on localhost.
ClusterName=stability-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# scheduling: CPUs and memory are consumable, so several 1-CPU jobs run at once
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
# GresTypes left unset (empty): no GPUs as GRES. Note: a literal "GresTypes=" is a parse error.
# no accounting database: use squeue, not sacct, for job status
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# keep finished jobs visible to squeue/scontrol for a while (snakemake polls squeue)
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
MARKER="# Written by scripts/slurm-up.sh (stability)"
if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF" && [[ ${SLURM_UP_FORCE:-0} != 1 ]]; then
  die "$CONF exists and was not written by this script (a real cluster?); refusing to overwrite it. Set SLURM_UP_FORCE=1 to replace it."
fi
conf_changed=0
if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$new_conf" ]]; then
  log "writing $CONF (node $NODE: CPUs=$CPUS RealMemory=${MEM_MB}MB)"
  printf '%s\n' "$new_conf" >"$CONF"
  conf_changed=1
fi
# Debian's slurm also reads /etc/slurm-llnl on old releases; keep a pointer there.
if [[ -d /etc/slurm-llnl && ! -e /etc/slurm-llnl/slurm.conf ]]; then
  ln -s "$CONF" /etc/slurm-llnl/slurm.conf
fi

# ---------------------------------------------------------------- daemons
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
CTLD_PID=/run/slurm/slurmctld.pid
SLURMD_PID=/run/slurm/slurmd.pid

if ((conf_changed)); then
  for pidf in "$SLURMD_PID" "$CTLD_PID"; do
    if pid_alive "$pidf"; then
      log "config changed: stopping pid $(cat "$pidf") ($pidf)"
      kill "$(cat "$pidf")" || true
      for _ in $(seq 50); do pid_alive "$pidf" || break; sleep 0.2; done
    fi
  done
fi

if ! pid_alive "$CTLD_PID"; then
  log "starting slurmctld"
  "$SLURMCTLD" >&2 || die "slurmctld failed to start (see /var/log/slurm/slurmctld.log)"
fi
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q 'is UP' \
  || die "slurmctld is not answering (see /var/log/slurm/slurmctld.log)"

if ! pid_alive "$SLURMD_PID"; then
  log "starting slurmd"
  "$SLURMD" >&2 || die "slurmd failed to start (see /var/log/slurm/slurmd.log)"
fi

# ---------------------------------------------------------------- wait for idle
deadline=$((SECONDS + TIMEOUT))
resumed=0
while :; do
  # %t: compact state; a suffix such as '*' (not responding) or '~' means not ready yet
  state=$(sinfo -h -n "$NODE" -o '%t' 2>/dev/null | head -n1 || true)
  case $state in
    idle | mix | alloc | comp)
      log "node $NODE is $state; partition debug ready"
      exit 0
      ;;
    drain* | drng* | down* | fail*)
      # e.g. left drained by an earlier run; ReturnToService=2 covers most cases
      if ((!resumed)); then
        log "node $NODE is $state: resuming it"
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
        resumed=1
      fi
      ;;
  esac
  if ((SECONDS >= deadline)); then
    echo "slurm-up: ERROR: node $NODE not idle after ${TIMEOUT}s (state: '${state:-unknown}')." >&2
    sinfo -N -l >&2 2>&1 || true
    scontrol show node "$NODE" 2>&1 | grep -Ei 'state|reason' >&2 || true
    echo "--- tail /var/log/slurm/slurmctld.log" >&2; tail -n 20 /var/log/slurm/slurmctld.log >&2 2>/dev/null || true
    echo "--- tail /var/log/slurm/slurmd.log" >&2; tail -n 20 /var/log/slurm/slurmd.log >&2 2>/dev/null || true
    exit 1
  fi
  sleep 1
done
