#!/usr/bin/env python3
"""Merges procpool's Google Benchmark JSON with python_pool.py's JSON lines into a Markdown report.

    report.py RESULTS.cpp.json RESULTS.python.jsonl [RESULTS.mpi.jsonl] [--kept-memory RESULTS.cpp-kept.json]
              [--compile RESULTS.compile.json] [--plot-data FILE.tsv] > RESULTS.md

With --plot-data it also writes the CPU-scaling speedups as a table for benchmarks/speedup.gp. --kept-memory adds
the workloads of a second bench_pool run made with glibc told to keep freed memory (run.sh's GLIBC_TUNABLES), as
rows named "<workload>_kept_memory". --compile adds the compile-cost rows of scripts/compile_cost --json.
"""
import json
import os
import platform
import statistics
import sys

HIGHER_IS_BETTER = {"tasks/s", "items/s", "GB/s", "ops/s"}  # for the others (us, ms, ns, x ideal) lower is better
BASELINES = ("threads", "serial")  # bench_pool.cpp reports them as workloads "<workload>_threads", "<workload>_serial"


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores, Linux {platform.release()}"


KEPT_SUFFIX = "_kept_memory"


def kept_name(workload):
    """The name of a workload measured with glibc keeping freed memory; a baseline's suffix stays last."""
    for kind in BASELINES:
        if workload.endswith("_" + kind):
            return workload.removesuffix("_" + kind) + KEPT_SUFFIX + "_" + kind
    return workload + KEPT_SUFFIX


def load_cpp(path, rename=lambda workload: workload):
    with open(path) as f:
        data = json.load(f)
    figures = {}
    extras = {}
    for bench in data["benchmarks"]:
        if bench.get("run_type") == "aggregate" or "label" not in bench:
            continue
        workload, unit = bench["label"].split("|")
        workload = rename(workload)
        figures.setdefault(workload, (unit, []))[1].append(bench["figure"])
        extra = {k: v for k, v in bench.items() if k in ("serial_ms", "threads_ms", "speedup", "vs_threads",
                                                          "private_kib_per_worker", "std_mutex_ns", "fourth_map",
                                                          "first_vs_fourth", "first_ms", "fourth_ms",
                                                          "first_faults", "fourth_faults", "shared_ns_per_page",
                                                          "cpus")}
        if extra:
            extras.setdefault(workload, []).append(extra)
    # One dict per workload, each figure the median over the repetitions (as the figures are).
    extras = {w: [{k: statistics.median(e[k] for e in reps if k in e) for k in {k for e in reps for k in e}}]
              for w, reps in extras.items()}
    return {w: (u, statistics.median(v)) for w, (u, v) in figures.items()}, extras, data.get("context", {})


def split_baselines(cpp):
    """procpool's figures without the baselines, and {workload: {"threads": value, "serial": value}}."""
    ours, baselines = {}, {}
    for workload, (unit, value) in cpp.items():
        for kind in BASELINES:
            base = workload.removesuffix("_" + kind)
            if base != workload and base in cpp:
                baselines.setdefault(base, {})[kind] = value
                break
        else:
            ours[workload] = (unit, value)
    return ours, baselines


def load_python(path):
    figures = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                figures[record["workload"]] = record
    return figures


def python_version(python):
    """The version of the Python that ran python_pool.py (recorded in its lines since 2026-11-27), else unknown."""
    versions = {record["python"] for record in python.values() if "python" in record}
    return ", ".join(sorted(versions)) if versions else "(version not recorded)"


def ratio(unit, ours, theirs):
    if not ours or not theirs:
        return ""
    value = ours / theirs if unit in HIGHER_IS_BETTER else theirs / ours
    return f"{value:.1f}x" if value >= 1 else f"{value:.2g}x"


def figure(value, missing=""):
    return f"{value:,.3g}" if value is not None else missing


def scaling_rows(cpp, extras, python):
    """(task size, workers, procpool ms, serial ms, threads ms, python ms, python serial ms) per scaling run."""
    rows = []
    for workload, (_, value) in cpp.items():
        if not workload.startswith("cpu_scaling"):
            continue
        size, workers = workload[len("cpu_scaling_"):].split("_")
        extra = extras.get(workload, [{}])[0]
        py = python.get(workload, {})
        rows.append((size, int(workers.replace("workers", "")), value, extra.get("serial_ms", float("nan")),
                     extra.get("threads_ms", float("nan")), py.get("value", float("nan")),
                     py.get("serial_ms", float("nan"))))
    return sorted(rows, key=lambda r: (float(r[0].rstrip("ms")), r[1]))


def write_plot_data(path, rows):
    """One block per task size (gnuplot's `index`): workers and speedup vs serial for procpool, threads, Python."""
    with open(path, "w") as f:
        for size in dict.fromkeys(r[0] for r in rows):
            f.write(f"# {size} tasks: workers procpool threads python\n")
            for _, workers, ours, serial, threads, py, py_serial in (r for r in rows if r[0] == size):
                f.write(f"{workers} {serial / ours:.4f} {serial / threads:.4f} {py_serial / py:.4f}\n")
            f.write("\n\n")


DICT_PREFIX = "dict_"


def write_dict_table(ours, python):
    """SharedDict against Manager().dict(): one row per operation and number of processes (bench_pool.cpp's
    BM_shared_dict, python_pool.py's bench_manager_dict)."""
    rows = [(w, u, v) for w, (u, v) in ours.items() if w.startswith(DICT_PREFIX)]
    if not rows:
        return
    print("\n## Shared dict: procpool's SharedDict against Python's Manager().dict()\n")
    print("Total operations per second of all processes; keys \"k0\"..\"k999\", int values; the increment is "
          "`d.update(k, ++)` in procpool and `with lock: d[k] += 1` (a `Manager().Lock()`) in Python.\n")
    print("| operation | processes | procpool | Python `Manager().dict()` | procpool vs Python |")
    print("|---|---:|---:|---:|---:|")
    for workload, unit, value in rows:
        operation, processes = workload[len(DICT_PREFIX):].rsplit("_", 1)
        theirs = python.get(workload, {}).get("value") or None
        print(f"| {operation} | {processes.rstrip('procs')} | {per_second(value)} | {per_second(theirs)} | "
              f"{ratio(unit, value, theirs)} |")


def per_second(value):
    """A rate as "6.21 M/s", "25.1 k/s"."""
    if value is None:
        return "n/a"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g} {suffix}/s"
    return f"{value:.3g} /s"


def write_compile_table(path):
    """The compile-cost section, from scripts/compile_cost --json (CPU time of the compiler, so load distorts less)."""
    with open(path) as f:
        data = json.load(f)
    print("\n## Compile cost of a file that uses a pool\n")
    print(f"{data['compiler']}, `{data['flags']} -c`, medians of {data['rows'][0]['runs']} alternating runs "
          "(scripts/compile_cost): CPU time of the compiler (user + sys) and its peak memory, for a file that uses "
          "`map`, `apply_async` and `imap` of a lambda (benchmarks/compile_cost/procpool_tu.cpp) and the same work "
          "with `std::async` (std_async_tu.cpp). The compiled mode's library is compiled once per project.\n")
    print("| translation unit | CPU s | peak RSS MiB | vs std::async |")
    print("|---|---:|---:|---:|")
    for row in data["rows"]:
        ratio_text = "" if "library" in row["unit"] else f"{row['vs_std_async']:.2f}x"
        print(f"| {row['unit']} | {row['cpu_s']:.2f} | {row['peak_rss_mib']:.0f} | {ratio_text} |")


def take_option(args, name):
    """Removes `name VALUE` from args and returns VALUE (None if absent)."""
    if name not in args:
        return None
    at = args.index(name)
    value = args[at + 1]
    del args[at:at + 2]
    return value


def write_first_map_table(first_maps, ours, extras):
    """BM_first_map's rows, with the least time the first map's extra page faults can take (the fault floor)."""
    fault = ours.get("fresh_page_fault")
    fault_extra = extras.get("fresh_page_fault", [{}])[0]
    print("\n## The first map of a process next to the later ones\n")
    print("Each sample a fresh process that builds a pool and runs the same map 4 times (bench_pool's "
          "BM_first_map); the steady row is the workload above, timed after 3 untimed maps. "
          "write_40mib_shared_memory maps nothing: 40 MiB written into fresh shared memory, then into the "
          "same pages again, the price of a first touch on this machine. copy_16x10mib_shared_memory maps "
          "nothing either: 16 copies of 10 MiB made with the function the pool copies a map's input into its "
          "arena with (two threads), into fresh shared memory and then the same pages: about the least the 10 MiB "
          "arguments' first map can take here.")
    if fault:
        print(f"\nA fresh page costs {fault[1]:,.0f} ns of CPU in private memory and "
              f"{fault_extra.get('shared_ns_per_page', float('nan')):,.0f} ns in shared memory "
              f"({fault_extra.get('cpus', 0):.0f} CPUs touching at once). The fault floor is the first map's page "
              "faults beyond the fourth's at those prices, spread over every CPU: the least time they can take, "
              "from all private to all shared. The last column is the first map's time without it, over the "
              "fourth's.")
    print("\n| workload | unit | first map | fourth map, same process | first / fourth | steady | "
          "extra faults | fault floor | fourth / (first - floor) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for workload, (unit, value) in first_maps:
        extra = extras.get(workload, [{}])[0]
        steady = ours.get(workload.removesuffix("_first_map"))
        steady_text = f"{steady[1]:,.3g}" if steady else "-"
        floor_text = ratio_text = faults_text = "-"
        faults = extra.get("first_faults", 0) - extra.get("fourth_faults", 0)
        if fault and faults > 0 and extra.get("fourth_ms"):
            cpus = fault_extra.get("cpus", 1)
            low = faults * fault[1] / cpus / 1e6
            high = faults * fault_extra.get("shared_ns_per_page", fault[1]) / cpus / 1e6
            first_ms, fourth_ms = extra["first_ms"], extra["fourth_ms"]
            faults_text = f"{faults:,.0f}"
            floor_text = f"{low:.0f}-{high:.0f} ms"
            ratio_text = f"{fourth_ms / max(first_ms - low, 1e-9):.2f}-{fourth_ms / max(first_ms - high, 1e-9):.2f}"
        print(f"| {workload.removesuffix('_first_map')} | {unit} | {value:,.3g} | "
              f"{extra.get('fourth_map', float('nan')):,.3g} | {extra.get('first_vs_fourth', float('nan')):.2f} | "
              f"{steady_text} | {faults_text} | {floor_text} | {ratio_text} |")
    args = extras.get("payload_10mib_args_first_map", [{}])[0]
    copy = extras.get("copy_16x10mib_shared_memory_first_map", [{}])[0]
    if args.get("first_ms") and args.get("fourth_ms") and copy.get("first_ms") and copy.get("fourth_ms"):
        price = copy["first_ms"] - copy["fourth_ms"]
        rest = args["first_ms"] - price
        ratio = f"{args['fourth_ms'] / rest:.2f}" if rest > 0 else "-"
        print(f"\nThe 10 MiB arguments' first map took {args['first_ms']:.0f} ms and its fourth {args['fourth_ms']:.0f} ms. "
              f"The same copies alone took {copy['first_ms']:.0f} ms into fresh shared memory and "
              f"{copy['fourth_ms']:.0f} ms into the same pages: {price:.0f} ms that no first map on this machine "
              f"avoids. Without them the first map took {rest:.0f} ms: fourth / (first - {price:.0f} ms) = {ratio}.")


def main():
    args = sys.argv[1:]
    plot_data = take_option(args, "--plot-data")
    kept_memory = take_option(args, "--kept-memory")
    compile_cost = take_option(args, "--compile")
    sys.argv[1:] = args
    cpp, extras, context = load_cpp(sys.argv[1])
    if kept_memory and os.path.exists(kept_memory):
        cpp.update(load_cpp(kept_memory, kept_name)[0])
    ours, baselines = split_baselines(cpp)
    python = load_python(sys.argv[2])
    rows = scaling_rows(cpp, extras, python)
    if plot_data:
        write_plot_data(plot_data, rows)
    print(f"# procpool benchmark results\n\nMachine: {machine()}  ")
    print(f"Run: {context.get('date', '')}, Google Benchmark `{context.get('library_build_type', '')}` library, "
          f"Python {python_version(python)} `multiprocessing.Pool` (fork) on the same machine in the same run.\n")
    print("Figures are medians of repeated runs. \"procpool vs Python\" is how many times better procpool is. "
          "\"thread pool\" and \"serial loop\" are the same work in the benchmark's own process, in the same run: "
          "a plain thread pool (the ceiling without process isolation) and a loop; \"procpool vs threads\" is how "
          "many times better procpool is than that thread pool.\n")
    print("| workload | unit | procpool | Python multiprocessing | procpool vs Python | thread pool | serial loop"
          " | procpool vs threads |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for workload, (unit, value) in ours.items():
        if workload.startswith("cpu_scaling") or workload.startswith(DICT_PREFIX):
            continue
        theirs = python.get(workload, {}).get("value") or None
        baseline = baselines.get(workload, {})
        print(f"| {workload} | {unit} | {value:,.3g} | {figure(theirs, 'n/a')} | {ratio(unit, value, theirs)} | "
              f"{figure(baseline.get('threads'))} | {figure(baseline.get('serial'))} | "
              f"{ratio(unit, value, baseline.get('threads'))} |")
    if any(KEPT_SUFFIX in workload for workload in ours):
        print(f"\nRows with `{KEPT_SUFFIX}`: the same benchmarks run once more by run.sh with glibc told to keep freed "
              "memory (its GLIBC_TUNABLES: one arena, blocks under 32 MiB from the heap, no trimming).")
    write_dict_table(ours, python)
    scaling = [(w, v) for w, v in ours.items() if w.startswith("cpu_scaling")]
    ten_ms = [r for r in rows if r[0] == "10.0ms"]
    if ten_ms:
        base = ten_ms[0][2]
        print("\n## Processes, runtime, speedup (60 tasks of 10 ms, as in Python multiprocessing guides)\n")
        print("| processes | runtime | speedup vs 1 process |")
        print("|---:|---:|---:|")
        for _, workers, ours, *_ in ten_ms:
            print(f"| {workers} | {ours:.0f} ms | {base / ours:.2f}x |")
    if scaling:
        print("\n## CPU-bound scaling (fixed task set)\n")
        print("| tasks | workers | serial ms | procpool ms | threads ms | speedup vs serial | procpool vs threads"
              " | Python ms | Python speedup |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for workload, (unit, value) in scaling:
            size, workers = workload[len("cpu_scaling_"):].split("_")
            extra = extras.get(workload, [{}])[0]
            py = python.get(workload, {})
            print(f"| {size} | {workers.replace('workers', '')} | {extra.get('serial_ms', 0):.0f} | {value:.0f} | "
                  f"{extra.get('threads_ms', 0):.0f} | {extra.get('speedup', 0):.2f}x | "
                  f"{extra.get('vs_threads', 0):.3f} | {py.get('value', float('nan')):.0f} | "
                  f"{py.get('speedup', float('nan')):.2f}x |")
    mpi_path = sys.argv[3] if len(sys.argv) > 3 else None
    if mpi_path and os.path.exists(mpi_path):
        rows = {}
        with open(mpi_path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.setdefault(r["workload"], {})[r["transport"]] = r
        print("\n## MPI pool on this machine (mpirun -n 3: 2 worker ranks), next to the fork pool with 2 workers\n")
        print("| workload | unit | MPI pool | fork pool |")
        print("|---|---|---:|---:|")
        for workload, by in rows.items():
            unit = next(iter(by.values()))["unit"]
            print(f"| {workload} | {unit} | {by.get('mpi', {}).get('value', float('nan')):,.3g} | "
                  f"{by.get('fork', {}).get('value', float('nan')):,.3g} |")
    first_maps = [(w, v) for w, v in ours.items() if w.endswith("_first_map")]
    if first_maps:
        write_first_map_table(first_maps, ours, extras)
    lock = extras.get("lock_acquire_release")
    if lock:
        print(f"\nFor comparison, std::mutex lock + unlock in the same process: {lock[0].get('std_mutex_ns', 0):.1f} ns.")
    idle = extras.get("idle_cpu")
    if idle:
        print(f"\nPrivate memory per idle worker: {idle[0].get('private_kib_per_worker', 0):.0f} KiB "
              "(Private_Clean + Private_Dirty from /proc/PID/smaps_rollup, shared rings excluded).")
    if compile_cost and os.path.exists(compile_cost):
        write_compile_table(compile_cost)


if __name__ == "__main__":
    main()
