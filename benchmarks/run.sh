#!/usr/bin/env bash
# Runs procpool's benchmarks and Python's multiprocessing.Pool on the same workloads, in one run, and writes
# benchmarks/results/<date>-<host>.{json,md}. Usage: benchmarks/run.sh [workload ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --preset release >/dev/null
cmake --build --preset release --target bench_pool >/dev/null
cmake --build --preset release --target bench_mpi >/dev/null 2>&1 || true  # only where MPI is installed
stamp="$(date -u +%Y-%m-%d)-$(hostname -s)"
out="benchmarks/results/$stamp"
mkdir -p benchmarks/results
echo "benchmarks: procpool (C++) ..." >&2
build/release/benchmarks/bench_pool --benchmark_format=json --benchmark_repetitions=3 \
    --benchmark_report_aggregates_only=false > "$out.cpp.json"
echo "benchmarks: Python multiprocessing.Pool ..." >&2
/usr/bin/python3 benchmarks/python_pool.py "$@" > "$out.python.jsonl"
if [ -x build/release/benchmarks/bench_mpi ]; then
    echo "benchmarks: MPI pool (mpirun -n 3) ..." >&2
    mpi_flags=(--oversubscribe)
    [ "$(id -u)" -eq 0 ] && mpi_flags+=(--allow-run-as-root)
    mpirun "${mpi_flags[@]}" -n 3 build/release/benchmarks/bench_mpi > "$out.mpi.jsonl"
fi
/usr/bin/python3 benchmarks/report.py "$out.cpp.json" "$out.python.jsonl" "$out.mpi.jsonl" > "$out.md"
cat "$out.md"
