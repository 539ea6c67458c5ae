#!/usr/bin/env bash
# Start a one-node SLURM cluster on localhost for the SLURM tests (`make test-slurm`), without systemd.
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge when missing (root + apt-get only), writes a
# slurm.conf for this machine (no accounting database, so jobs are followed with `squeue`; finished jobs
# stay visible for MinJobAge=600 s), and starts munged, slurmctld and slurmd in the background. Their pid
# files, logs, state and configuration live under $QGEN_SLURM_BASE (default /tmp/qgen-slurm);
# stop_cluster.sh stops exactly those pids. /etc/slurm/slurm.conf is linked to the generated file while
# the cluster runs, because the Snakemake jobstep strips SLURM_CONF from the job's inner `srun`.
set -euo pipefail

BASE=${QGEN_SLURM_BASE:-/tmp/qgen-slurm}
RUN=$BASE/run
CONF=$BASE/etc/slurm.conf
SOCKET=$RUN/munge/munge.socket
ETC_LINK=/etc/slurm/slurm.conf
say() { echo "[start_cluster] $*"; }
fail() { say "ERROR: $*" >&2; exit 1; }

# --- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    fail "SLURM is missing: install slurmctld slurmd slurm-client munge (Debian/Ubuntu: apt-get install ...)"
  fi
  say "installing slurmctld slurmd slurm-client munge"
  # Keep the packages' maintainer scripts from starting services (there is no init system to own them).
  blocker=/usr/sbin/policy-rc.d
  made_blocker=0
  if [ ! -e "$blocker" ]; then printf '#!/bin/sh\nexit 101\n' > "$blocker"; chmod +x "$blocker"; made_blocker=1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
  [ "$made_blocker" = 1 ] && rm -f "$blocker"
fi
[ "$(id -u)" = 0 ] || fail "the local cluster's daemons run as root; run as root"

# --- our daemons: a pid file whose process is alive and runs the expected program
ours() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -r "/proc/$pid/cmdline" ] && [ "$(basename "$(tr '\0' '\n' < "/proc/$pid/cmdline" | head -1)")" = "$2" ]
}
wait_for() {  # wait_for <seconds> <command...>
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.2; done
}
if ours "$RUN/slurmctld.pid" slurmctld || ours "$RUN/slurmd.pid" slurmd || ours "$RUN/munge/munged.pid" munged; then
  fail "a cluster from $BASE is already running; stop it with tests/slurm/stop_cluster.sh"
fi

rm -rf "$BASE/state"
mkdir -p "$BASE/etc" "$BASE/log" "$BASE/state/ctld" "$BASE/state/d" "$RUN/munge" "$BASE/munge"
chmod 700 "$BASE/munge"
chmod 755 "$RUN" "$RUN/munge"

# --- configuration: the whole machine as one node in partition `debug`
hardware=$(slurmd -C | head -1)
field() { tr ' ' '\n' <<< "$hardware" | sed -n "s/^$1=//p"; }
cat > "$CONF" <<CONF
ClusterName=qgenci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$BASE/state/ctld
SlurmdSpoolDir=$BASE/state/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
KillWait=10
InactiveLimit=0
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(field CPUs) Sockets=$(field SocketsPerBoard) CoresPerSocket=$(field CoresPerSocket) ThreadsPerCore=$(field ThreadsPerCore) RealMemory=$(field RealMemory) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$CONF

mkdir -p /etc/slurm
if [ -L "$ETC_LINK" ] && [ "$(readlink "$ETC_LINK")" = "$CONF" ]; then
  :
elif [ -e "$ETC_LINK" ] || [ -L "$ETC_LINK" ]; then
  fail "$ETC_LINK exists and is not ours; not replacing it"
else
  ln -s "$CONF" "$ETC_LINK"
  echo "$ETC_LINK" > "$RUN/etc_link"
fi

# --- daemons
[ -s "$BASE/munge/munge.key" ] || dd if=/dev/urandom of="$BASE/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$BASE/munge/munge.key"
rm -f "$SOCKET" "$SOCKET.lock"
munged --socket="$SOCKET" --key-file="$BASE/munge/munge.key" --pid-file="$RUN/munge/munged.pid" \
  --log-file="$BASE/munge/munged.log" --seed-file="$BASE/munge/munged.seed"
wait_for 15 ours "$RUN/munge/munged.pid" munged || fail "munged did not start ($BASE/munge/munged.log)"
wait_for 15 test -S "$SOCKET" || fail "no munge socket $SOCKET"

slurmctld -f "$CONF" || fail "slurmctld did not start ($BASE/log/slurmctld.log)"
wait_for 30 ours "$RUN/slurmctld.pid" slurmctld || fail "slurmctld died ($BASE/log/slurmctld.log)"
slurmd -f "$CONF" -N localhost || fail "slurmd did not start ($BASE/log/slurmd.log)"
wait_for 30 ours "$RUN/slurmd.pid" slurmd || fail "slurmd died ($BASE/log/slurmd.log)"

node_up() { sinfo -h -n localhost -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
wait_for 60 node_up || fail "node localhost is $(sinfo -h -n localhost -o %T 2>&1) ($BASE/log/slurmd.log)"
srun -N1 -n1 -t 1 true || fail "srun smoke test failed"
say "cluster up: $(sinfo -h -o '%P %D %c CPUs %m MB %T'), config $CONF"
