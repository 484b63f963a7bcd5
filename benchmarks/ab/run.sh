#!/usr/bin/env bash
# A/B of the apply_async burst between two versions of procpool, in one process (ab.cpp): on the benchmark VM the
# rate of separate processes drifted 1.3-2.6 M tasks/s from one run to the next, so separate runs cannot resolve a few
# percent; two pools side by side, one burst each in turn, can.
# Usage: benchmarks/ab/run.sh <rev A> <rev B> [runs per order, default 8] [bursts per run, default 100]
#   a rev is anything git archive takes (HEAD, a commit), or "." for the working tree's include/.
# Prints each run and the geometric mean of B/A over both build orders (A/A of one rev on the benchmark VM: 1.004 and
# 1.005 over 64 runs, 0.99-1.04 over 8-32).
set -euo pipefail
cd "$(dirname "$0")/../.."
rev_a=$1
rev_b=$2
runs=${3:-8}
bursts=${4:-100}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree() {  # tree <rev> <dir>: the rev's include/ in <dir>/include
    mkdir -p "$2"
    if [ "$1" = . ]; then cp -r include "$2/"; else git archive "$1" include | tar -x -C "$2"; fi
}
tree "$rev_a" "$work/a"
tree "$rev_b" "$work/b"
flags=(-std=c++20 -O2 -g1 -DNDEBUG)
g++ "${flags[@]}" -I"$work/a/include" -DSIDE=a -c benchmarks/ab/side.cpp -o "$work/side_a.o" &
side_a=$!
g++ "${flags[@]}" -I"$work/b/include" -DSIDE=b -Dprocpool=procpool_ab_b -c benchmarks/ab/side.cpp -o "$work/side_b.o" &
side_b=$!
g++ "${flags[@]}" -c benchmarks/ab/ab.cpp -o "$work/ab.o"
wait "$side_a"  # (a bare `wait` would not fail with a compile that failed)
wait "$side_b"
g++ "$work/side_a.o" "$work/side_b.o" "$work/ab.o" -o "$work/ab" -lpthread
echo "A = $rev_a, B = $rev_b; $runs runs per build order, $bursts bursts of 20 000 each"
for _ in $(seq "$runs"); do
    timeout 300 "$work/ab" "$bursts"
    AB_B_FIRST=1 timeout 300 "$work/ab" "$bursts"
done | awk '{print} {s += log($NF); n++} END {printf "geometric mean of B/A: %.3f over %d runs\n", exp(s / n), n}'
