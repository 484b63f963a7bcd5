#!/usr/bin/env bash
# Runs the cluster example under mpirun on this machine: every rank runs a fork pool of its own (here all of the
# machine's CPUs each: oversubscribed), and rank 0 runs the program.
#   examples/cluster/run.sh [ranks]        (default 4; --oversubscribe lets a small machine run more ranks than cores)
# The same binary runs on a cluster under Slurm: see slurm.sbatch.
set -euo pipefail
ranks="${1:-4}"
binary="${CLUSTER_BINARY:-$(dirname "$0")/../../build/release/examples/cluster}"
# --bind-to none: Open MPI binds each rank to one core (or socket) by default, and a rank's pool would share it.
flags=(--oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
exec mpirun "${flags[@]}" -n "$ranks" "$binary"
