#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine (controller and compute node on localhost),
# for cl_bench's sweep test and for trying `clbench -m hardware=slurm ...` without a cluster.
#
#   sudo bash scripts/slurm_local.sh          # -> "slurm up: partition debug on <host>"
#   sudo bash scripts/slurm_local.sh stop     # stop the daemons
#
# Debian/Ubuntu (apt: slurmctld slurmd slurm-client munge); needs root; no systemd required.
# Idempotent: exits at once when `sinfo` already answers. Partition `debug` holds all cores and
# the memory minus 1 GiB. Accounting is off, so submitit warns "Bypassing sacct error" (harmless).
set -euo pipefail

if [ "${1:-}" = "stop" ]; then
  pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true
  echo "slurm stopped"; exit 0
fi
if timeout 5 sinfo -h >/dev/null 2>&1; then echo "slurm already up: $(sinfo -h -o '%P %T' | head -1)"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "slurm_local.sh: needs root (try sudo)" >&2; exit 1; fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurm-wlm and munge (apt)..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024 ))

# directories the daemons expect, owned by their users (munged refuses otherwise)
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
install -d -o munge -g munge -m 0700 /etc/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key; }
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
install -d /etc/slurm /var/spool/slurmd

cat > /etc/slurm/slurm.conf <<EOF
# written by cl_bench scripts/slurm_local.sh: one node, one partition, no accounting
ClusterName=local
SlurmctldHost=${host}
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x munged >/dev/null || runuser -u munge -- munged
pgrep -x slurmctld >/dev/null || slurmctld
sleep 2
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 90); do  # the node reports `unk*` for a few seconds after slurmd starts
  if [ "$(sinfo -h -o %T 2>/dev/null | head -1)" = "idle" ]; then
    echo "slurm up: partition debug on ${host} (${cpus} CPUs, ${mem_mb} MB)"; exit 0
  fi
  sleep 1
done
echo "slurm_local.sh: the node did not become idle; see /var/log/slurm/*.log" >&2
exit 1
