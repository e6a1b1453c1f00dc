#!/usr/bin/env bash
# slurm/local_cluster/stop.sh -- stop exactly the daemons slurm/local_cluster/start.sh started, by their pid files
# in $SLURM_LOCAL_BASE/run (default ${TMPDIR:-/tmp}/lightning-snn-slurm/run). Each pid is checked against the expected
# command name before it is signalled, so a stale pid file never hits an unrelated process.
#   SLURM_LOCAL_KEEP_JOBS=1  do not scancel queued/running jobs first
#   SLURM_LOCAL_PURGE=1      also delete the state (job ids restart at 1, no requeued jobs survive)
set -uo pipefail

BASE="${SLURM_LOCAL_BASE:-${TMPDIR:-/tmp}/lightning-snn-slurm}"
RUN="$BASE/run"
log() { echo "[local-slurm stop $(date +%T.%3N)] $*" >&2; }

pid_of() {  # pidfile expected-comm-prefix -> prints pid if alive and matching
  local f=$1 name=$2 pid comm
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ "$comm" == "$name"* ]] && echo "$pid"
}

stop_one() {  # name pidfile
  local name=$1 f=$2 pid
  if pid=$(pid_of "$f" "$name"); then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 75); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    if [ -d "/proc/$pid" ]; then log "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null; sleep 0.5; fi
    log "stopped $name (pid $pid)"
  else
    [ -e "$f" ] && log "$name: pid file $f is stale -- nothing to stop"
  fi
  rm -f "$f"
}

# 1. cancel jobs first: slurmd does NOT kill running job steps (slurmstepd) when it stops
if [ "${SLURM_LOCAL_KEEP_JOBS:-0}" != 1 ] && pid_of "$RUN/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    log "cancelling jobs: $(echo $jobs)"
    scancel $jobs 2>/dev/null
    for _ in $(seq 60); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.25; done
  fi
fi

# 2. daemons, in reverse start order
stop_one slurmd    "$RUN/slurmd.pid"
stop_one slurmctld "$RUN/slurmctld.pid"
stop_one slurmdbd  "$RUN/slurmdbd.pid"
stop_one mariadbd  "$RUN/mariadb/mariadbd.pid"
stop_one munged    "$RUN/munged.pid"     # only present if slurm/local_cluster/start.sh started munged

# 3. report (never kill) job-step daemons that outlived slurmd
left=""
for c in /proc/[0-9]*/comm; do
  [ "$(cat "$c" 2>/dev/null)" = slurmstepd ] && { p=${c#/proc/}; left="$left ${p%/comm}"; }
done
[ -n "$left" ] && log "WARNING: slurmstepd processes still running (pids:$left)"

if [ "${SLURM_LOCAL_PURGE:-0}" = 1 ]; then rm -rf "$BASE/state" "$BASE/mysql"; log "purged $BASE/state"; fi
exit 0
