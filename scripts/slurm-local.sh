#!/usr/bin/env bash
# A private one-node Slurm cluster on this machine, for the scale-out test and benchmark
# (tests/scaleout.rs, docs/scale-out.md): Debian's munge, slurmctld and slurmd started as
# plain processes (no systemd), everything — config, state, sockets, logs — in DIR.
#
#   slurm-local.sh start DIR   start munged, slurmctld and slurmd; prints SLURM_CONF=DIR/slurm.conf
#   slurm-local.sh stop DIR    stop the daemons started in DIR (and only those)
#
# Ports are free ones picked at start, so two clusters (or a real one) do not collide.
# The packages come from scripts/setup-slurm.sh.
set -euo pipefail
what="${1:-}"
dir="${2:-}"
if [ -z "$what" ] || [ -z "$dir" ]; then
  echo "usage: slurm-local.sh start|stop DIR" >&2
  exit 2
fi

stop() {
  # SIGTERM to each daemon by its pid file, then wait for it to go.
  for daemon in slurmd slurmctld munged; do
    pidfile="$dir/$daemon.pid"
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

case "$what" in
  stop)
    stop
    exit 0
    ;;
  start) ;;
  *)
    echo "slurm-local.sh: unknown command '$what' (start or stop)" >&2
    exit 2
    ;;
esac

for tool in munged slurmctld slurmd sbatch; do
  command -v "$tool" >/dev/null || { echo "slurm-local.sh: $tool is not installed; run scripts/setup-slurm.sh" >&2; exit 1; }
done
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
trap 'stop' ERR

# munge: a key of our own, a socket in DIR.
head -c 128 /dev/urandom >"$dir/munge.key"
chmod 600 "$dir/munge.key"
munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" --log-file="$dir/log/munged.log" \
  --pid-file="$dir/munged.pid" --seed-file="$dir/munged.seed" </dev/null >"$dir/log/munged.out" 2>&1
for _ in $(seq 50); do [ -S "$dir/munge.sock" ] && break; sleep 0.1; done

ports="$(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')"
read -r ctld_port d_port <<<"$ports"
user="$(id -un)"
memory="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
cpus="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')"
cat >"$dir/slurm.conf" <<EOF
# A private one-node cluster (scripts/slurm-local.sh).
ClusterName=sitsflow-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"
# -D: in the foreground of a background process (no systemd, no daemon fork); the pid
# files name them for `stop`.
setsid slurmctld -D -c -f "$SLURM_CONF" </dev/null >"$dir/log/slurmctld.out" 2>&1 &
setsid slurmd -D -N localhost -f "$SLURM_CONF" </dev/null >"$dir/log/slurmd.out" 2>&1 &
for _ in $(seq 100); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "slurm-local.sh: the node did not come up in 20 s; logs in $dir/log" >&2
tail -n 5 "$dir"/log/*.out "$dir"/log/*.log >&2 || true
stop
exit 1
