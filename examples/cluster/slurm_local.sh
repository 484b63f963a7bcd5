#!/usr/bin/env bash
# Proves the Slurm path: starts a real single-node Slurm on this machine (munged, slurmctld and slurmd, on
# localhost, configuration under a scratch directory) and runs the cluster example through sbatch and srun: `ranks`
# ranks of one CPU each (--cpus-per-task=1), so a fork pool of one worker per rank; one of its tasks segfaults on
# purpose and the job must still complete.
#   examples/cluster/slurm_local.sh [ranks]      (as root; default 4 ranks; installs slurm-wlm and munge if missing)
# It leaves nothing running: the daemons are stopped when it ends.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
binary="${CLUSTER_BINARY:-$root/build/release/examples/cluster}"
ranks="${1:-4}"
[ -x "$binary" ] || { echo "slurm_local: build the example first ($binary)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "slurm_local: run as root (it starts the Slurm daemons)" >&2; exit 2; }

missing=()
for package in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

state="$(mktemp -d /tmp/procpool-slurm.XXXXXX)"
mkdir -p "$state/spool" "$state/state"
export SLURM_CONF="$state/slurm.conf"
host="$(hostname -s)"
cleanup() {
    [ -f "$state/slurmd.pid" ] && kill "$(cat "$state/slurmd.pid")" 2>/dev/null || true
    [ -f "$state/slurmctld.pid" ] && kill "$(cat "$state/slurmctld.pid")" 2>/dev/null || true
    [ -f "$state/munged.pid" ] && kill "$(cat "$state/munged.pid")" 2>/dev/null || true
}
trap cleanup EXIT

# munge authenticates Slurm's messages: a key, and the daemon (allowed to run as root here).
[ -f /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge /etc/munge/munge.key 2>/dev/null || true
munged --force --pid-file="$state/munged.pid" --socket=/run/munge/munge.socket.2 2>/dev/null || true

cat > "$SLURM_CONF" <<EOF
ClusterName=procpool-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
SlurmdParameters=config_overrides
ReturnToService=2
NodeName=$host CPUs=$ranks State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
EOF
slurmctld -c
slurmd
for _ in $(seq 1 60); do
    [ "$(sinfo -h -o %T 2>/dev/null)" = "idle" ] && break
    sleep 1
done
sinfo

cat > "$state/job.sbatch" <<EOF
#!/bin/bash
#SBATCH --job-name=procpool-cluster
#SBATCH --ntasks=$ranks
#SBATCH --cpus-per-task=1
#SBATCH --output=$state/job.out
export OMP_NUM_THREADS=1
srun --mpi=pmix --cpus-per-task="\$SLURM_CPUS_PER_TASK" "$binary"
EOF
job="$(sbatch --parsable "$state/job.sbatch")"
echo "slurm_local: submitted job $job ($ranks ranks)"
for _ in $(seq 1 180); do
    job_state="$(scontrol show job "$job" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')"
    case "$job_state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
    sleep 1
done
cat "$state/job.out"
echo "slurm_local: job $job ended $job_state"
[ "$job_state" = "COMPLETED" ] && grep -q "segfaulted on purpose" "$state/job.out" &&
    grep -q "simulations on $ranks worker processes" "$state/job.out"
