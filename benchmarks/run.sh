#!/usr/bin/env bash
# The one command that regenerates the benchmark results and the plot. It runs procpool's benchmarks, Python's
# multiprocessing (Pool, Queue, Pipe, Manager().dict()) on the same workloads and (where MPI is installed) the MPI
# pool, in one run, and writes
#   benchmarks/results/<date>-<host>.{cpp.json,cpp-kept.json,python.jsonl,mpi.jsonl,compile.json,scaling.tsv,md}
#                                                                          raw figures and the report
#   benchmarks/results/speedup.svg                                          the plot benchmarks/README.md shows
# Usage: benchmarks/run.sh [python workload ...]. Run it on a quiet machine: the figures are wall-clock times.
# A subset, C++ and Python in the same run: BENCH_FILTER='<Google Benchmark regex>' benchmarks/run.sh <python
# workloads> writes <date>-<host>-subset.{cpp.json,python.jsonl,md} only (BENCH_NAME=<name> replaces "subset"; a
# repeated run the same day adds -2, -3, ...),
# e.g. BENCH_FILTER='BM_apply_async_burst|BM_imap' BENCH_NAME=bursts-python benchmarks/run.sh apply_async_burst imap
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for package in g++ cmake ninja-build libboost-dev libbenchmark-dev python3 gnuplot-nox; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
cmake --preset release >/dev/null
cmake --build --preset release --target bench_pool >/dev/null
cmake --build --preset release --target bench_mpi >/dev/null 2>&1 || true  # only where MPI is installed
stamp="$(date -u +%Y-%m-%d)-$(hostname -s)"
out="benchmarks/results/$stamp"
mkdir -p benchmarks/results
if [ -n "${BENCH_FILTER:-}" ]; then
    base="$out-${BENCH_NAME:-subset}"
    out="$base"
    for ((n = 2; ; ++n)); do  # never over an earlier run's files: -2, -3, ...
        [ -e "$out.md" ] || [ -e "$out.cpp.json" ] || break
        out="$base-$n"
    done
    echo "benchmarks: procpool (C++) matching $BENCH_FILTER ..." >&2
    build/release/benchmarks/bench_pool --benchmark_format=json --benchmark_repetitions=3 \
        --benchmark_report_aggregates_only=false --benchmark_filter="$BENCH_FILTER" > "$out.cpp.json"
    echo "benchmarks: Python multiprocessing.Pool: ${*:-every workload} ..." >&2
    /usr/bin/python3 benchmarks/python_pool.py "$@" > "$out.python.jsonl"
    /usr/bin/python3 benchmarks/report.py "$out.cpp.json" "$out.python.jsonl" > "$out.md"
    cat "$out.md"
    echo "benchmarks: wrote $out.md" >&2
    exit 0
fi
echo "benchmarks: procpool (C++) ..." >&2
build/release/benchmarks/bench_pool --benchmark_format=json --benchmark_repetitions=3 \
    --benchmark_report_aggregates_only=false > "$out.cpp.json"
# Large results once more with glibc told to keep freed memory (benchmarks/README.md; docs/guide.md, "Large results
# and the allocator"): the same binary, only the allocator's policy differs, so the two rows show what fresh pages
# cost the parent on this machine.
kept_tunables="glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
echo "benchmarks: 10 MiB results with GLIBC_TUNABLES=$kept_tunables ..." >&2
GLIBC_TUNABLES="$kept_tunables" build/release/benchmarks/bench_pool --benchmark_format=json \
    --benchmark_filter='BM_payload<.*>/0/|BM_payload_floor' --benchmark_repetitions=3 \
    --benchmark_report_aggregates_only=false > "$out.cpp-kept.json"
echo "benchmarks: Python multiprocessing.Pool ..." >&2
/usr/bin/python3 benchmarks/python_pool.py "$@" > "$out.python.jsonl"
if [ -x build/release/benchmarks/bench_mpi ]; then
    echo "benchmarks: MPI pool (mpirun -n 3) ..." >&2
    mpi_flags=(--oversubscribe)
    [ "$(id -u)" -eq 0 ] && mpi_flags+=(--allow-run-as-root)
    mpirun "${mpi_flags[@]}" -n 3 build/release/benchmarks/bench_mpi > "$out.mpi.jsonl"
fi
echo "benchmarks: compile cost (scripts/compile_cost) ..." >&2
/usr/bin/python3 scripts/compile_cost --json --runs 3 > "$out.compile.json"
/usr/bin/python3 benchmarks/report.py "$out.cpp.json" "$out.python.jsonl" "$out.mpi.jsonl" \
    --kept-memory "$out.cpp-kept.json" --compile "$out.compile.json" --plot-data "$out.scaling.tsv" > "$out.md"
machine="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
gnuplot -e "data='$out.scaling.tsv'; out='benchmarks/results/speedup.svg'; cores=$(nproc); machine='$machine'" \
    benchmarks/speedup.gp
cat "$out.md"
echo "benchmarks: wrote $out.md and benchmarks/results/speedup.svg" >&2
