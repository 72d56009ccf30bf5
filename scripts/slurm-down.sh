#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by scripts/slurm-up.sh:
# slurmd, slurmctld and munged.  Safe to run when nothing is running.
# Pass --purge to also forget saved controller state (queued/finished jobs).
set -uo pipefail

log() { echo "slurm-down: $*" >&2; }
[[ $(id -u) -eq 0 ]] || { log "ERROR: must run as root"; exit 1; }

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() { # <pidfile> <name>
  local pidf=$1 name=$2
  if pid_alive "$pidf"; then
    local pid
    pid=$(cat "$pidf")
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) did not stop in 10 s: SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidf"
}

# Cancel what is still queued or running, so slurmd does not leave orphans behind.
if command -v scancel >/dev/null 2>&1 && pid_alive /run/slurm/slurmctld.pid; then
  scancel --full --quiet --user=root 2>/dev/null || true
  sleep 1
fi
stop_pidfile /run/slurm/slurmd.pid slurmd
stop_pidfile /run/slurm/slurmctld.pid slurmctld

if [[ ${1:-} == --purge ]]; then
  log "purging controller state in /var/lib/slurm/slurmctld"
  rm -rf /var/lib/slurm/slurmctld/*
fi

if command -v munged >/dev/null 2>&1 && [[ -S /run/munge/munge.socket.2 ]]; then
  if munged --stop >/dev/null 2>&1 || runuser -u munge -- munged --stop >/dev/null 2>&1; then
    log "stopped munged"
  fi
fi
stop_pidfile /run/munge/munged.pid munged
log "done"
