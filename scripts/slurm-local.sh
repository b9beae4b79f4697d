#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the tests of `crispr run --executor slurm`.
#
#   scripts/slurm-local.sh start DIR   # install slurm-wlm + munge if missing, write DIR/slurm.conf,
#                                      # start munged, slurmctld and slurmd; prints `export SLURM_CONF=…`
#   scripts/slurm-local.sh stop DIR    # stop the daemons started by `start DIR`
#
# No cgroups (proctrack/linuxproc, task/none): works in containers and VMs without systemd. The
# daemons run as the calling user (root in CI), state and logs stay in DIR.
set -euo pipefail
cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

stop() {
  for d in slurmd slurmctld munged; do
    if [ -f "$dir/$d.pid" ]; then
      pid="$(cat "$dir/$d.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$d.pid"
    fi
  done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "unknown command $cmd" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  else
    echo "slurm-local: slurmctld/munged missing; install Debian's slurm-wlm and munge" >&2; exit 1
  fi
fi

user="$(id -un)"
host="$(hostname -s)"
# Task slots: more than the cores, so that the tests' short array tasks do not queue behind each
# other (config_overrides lets slurmd accept a node larger than the hardware).
cpus="${SLURM_LOCAL_CPUS:-$(( $(nproc) * 4 ))}"
mem_mb="$(awk '/MemTotal/ {print int($2/1024) - 1024}' /proc/meminfo)"
stop  # a previous start in the same folder
rm -rf "$dir/state" "$dir/spool"
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"

# munge: its own key and socket in DIR, so nothing system-wide is touched.
if [ ! -f "$dir/munge/munge.key" ]; then
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1 count=1024 status=none
  chmod 600 "$dir/munge/munge.key"
fi
sock="$dir/munge/munge.socket"
munged --force --key-file="$dir/munge/munge.key" --socket="$sock" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"

# Two free TCP ports on 127.0.0.1 (another cluster, e.g. an earlier start elsewhere, may hold some).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ctld_port=""
for p in $(seq 16817 2 16917); do
  if port_free "$p" && port_free "$((p + 1))"; then ctld_port="$p"; break; fi
done
[ -n "$ctld_port" ] || { echo "slurm-local: no free port pair in 16817-16918" >&2; exit 1; }

cat > "$dir/slurm.conf" <<CONF
ClusterName=crispr-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem_mb / cpus))
SchedulerType=sched/builtin
SchedulerParameters=sched_min_interval=0
SlurmdParameters=config_overrides
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MaxArraySize=100000
MinJobAge=30
KillWait=5
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -c -f "$SLURM_CONF"   # -c: no jobs from an earlier start
slurmd -f "$SLURM_CONF"
# Ready when the node accepts work.
for _ in $(seq 100); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "slurm-local: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
sinfo >&2 || true
exit 1
