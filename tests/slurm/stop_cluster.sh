#!/usr/bin/env bash
# Stop the cluster started by start_cluster.sh: cancel its jobs, then stop the daemons named in its pid
# files (checked to still run the expected program; never by name), and remove the /etc/slurm link.
set -uo pipefail

BASE=${QGEN_SLURM_BASE:-/tmp/qgen-slurm}
RUN=$BASE/run
export SLURM_CONF=$BASE/etc/slurm.conf
say() { echo "[stop_cluster] $*"; }

ours() {  # print the pid in pid file $1 if that process runs program $2
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -r "/proc/$pid/cmdline" ] && [ "$(basename "$(tr '\0' '\n' < "/proc/$pid/cmdline" | head -1)")" = "$2" ] \
    && echo "$pid"
}

if ours "$RUN/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(squeue -h -t pending,running,suspended -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs
    for _ in $(seq 100); do [ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

for daemon in slurmd:"$RUN/slurmd.pid" slurmctld:"$RUN/slurmctld.pid" munged:"$RUN/munge/munged.pid"; do
  name=${daemon%%:*}
  pidfile=${daemon#*:}
  if pid=$(ours "$pidfile" "$name"); then
    kill -TERM "$pid"
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && { say "$name ($pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid"; }
    say "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
done

if [ -s "$RUN/etc_link" ]; then
  link=$(cat "$RUN/etc_link")
  [ -L "$link" ] && [ "$(readlink "$link")" = "$BASE/etc/slurm.conf" ] && rm -f "$link"
  rm -f "$RUN/etc_link"
fi
exit 0
