#!/usr/bin/env python3
"""The Python side of procpool's comparison: the same workloads on multiprocessing.Pool.

Prints one JSON object per workload on stdout:
    {"workload": ..., "value": ..., "unit": ..., "samples": [...]}
Run by benchmarks/run.sh next to the C++ benchmarks, on the same machine, in the same run.

    python3 benchmarks/python_pool.py [workload ...]    (default: all)
"""
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time


def noop(x):
    return x


def double(x):
    return 2 * x


def echo(x):
    return x


def make_bytes(n):
    return b"y" * n


def spin(seconds):
    """A CPU-bound task: spins until this thread used `seconds` of CPU time (fixed work, as bench_pool.cpp)."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += 1
    return x


def emit(workload, value, unit, samples=None, **extra):
    record = {"workload": workload, "value": value, "unit": unit, "python": platform.python_version()}
    if samples is not None:
        record["samples"] = samples
    record.update(extra)
    print(json.dumps(record), flush=True)


def bench_apply_round_trip(workers, caller_work_us=0, calls=5000):
    """apply of a no-op, back to back, or after the caller worked caller_work_us (a wall-clock busy loop)."""
    with mp.Pool(workers) as pool:
        for i in range(200):
            pool.apply(noop, (i,))
        samples = []
        for i in range(calls):
            work_end = time.perf_counter() + caller_work_us * 1e-6
            while time.perf_counter() < work_end:
                pass
            start = time.perf_counter()
            pool.apply(noop, (i,))
            samples.append((time.perf_counter() - start) * 1e6)
    name = f"apply_after_{caller_work_us}us_caller_work" if caller_work_us else "apply_round_trip"
    emit(name, statistics.median(samples), "us", None, p90=sorted(samples)[int(len(samples) * 0.9)])


def bench_apply_async_burst(workers):
    with mp.Pool(workers) as pool:
        pool.apply(noop, (0,))
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            results = [pool.apply_async(noop, (i,)) for i in range(20000)]
            for r in results:
                r.get()
            rates.append(20000 / (time.perf_counter() - start))
    emit("apply_async_burst", statistics.median(rates), "tasks/s", rates)


WARM_MAPS = 3  # whole untimed maps first, as bench_pool.cpp's kWarmMaps: the steady state of repeated maps


def bench_map_tiny(workers):
    data = list(range(10_000_000))
    with mp.Pool(workers) as pool:
        for _ in range(WARM_MAPS):
            pool.map(double, data)
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            pool.map(double, data)
            rates.append(len(data) / (time.perf_counter() - start))
    emit("map_tiny", statistics.median(rates), "items/s", rates)


def bench_imap(workers):
    data = range(200_000)
    with mp.Pool(workers) as pool:
        pool.map(noop, range(1000))
        for name, chunksize in (("imap_chunksize_1", 1), ("imap_default", None)):
            for method in ("imap", "imap_unordered"):
                rates = []
                for _ in range(3):
                    start = time.perf_counter()
                    fn = getattr(pool, method)
                    n = sum(1 for _ in (fn(noop, data) if chunksize is None else fn(noop, data, chunksize)))
                    rates.append(n / (time.perf_counter() - start))
                emit(name.replace("imap", method, 1), statistics.median(rates), "items/s", rates)


def bench_large_payloads(workers):
    payload = b"x" * (10 << 20)
    items = [payload] * 16
    with mp.Pool(workers) as pool:
        pool.map(len, items[:2])
        args, results = [], []
        for _ in range(3):
            start = time.perf_counter()
            pool.map(len, items)
            args.append(len(items) * len(payload) / (time.perf_counter() - start) / 1e9)
            start = time.perf_counter()
            pool.map(make_bytes, [len(payload)] * len(items))
            results.append(len(items) * len(payload) / (time.perf_counter() - start) / 1e9)
    emit("payload_10mib_args", statistics.median(args), "GB/s", args)
    emit("payload_10mib_results", statistics.median(results), "GB/s", results)


def bench_start_teardown(_workers):
    samples = []
    for _ in range(20):
        start = time.perf_counter()
        with mp.Pool(2) as pool:
            pool.apply(noop, (1,))
        samples.append((time.perf_counter() - start) * 1e3)
    emit("pool2_start_apply_teardown", statistics.median(samples), "ms", samples)


def bench_cpu_scaling(workers):
    for task_ms, count in ((0.3, 2000), (10.0, 60)):
        tasks = [task_ms / 1e3] * count
        start = time.perf_counter()
        for t in tasks:
            spin(t)
        serial = time.perf_counter() - start
        for n in range(1, 2 * workers + 1):  # up to twice the cores, as bench_pool.cpp
            with mp.Pool(n) as pool:
                pool.map(spin, [0.0] * n)
                start = time.perf_counter()
                pool.map(spin, tasks)
                elapsed = time.perf_counter() - start
            emit(f"cpu_scaling_{task_ms}ms_{n}workers", elapsed * 1e3, "ms", None, serial_ms=serial * 1e3,
                 speedup=serial / elapsed)


def bench_skew(workers):
    tasks = [0.002] * 400
    tasks[17] = 0.2
    ideal = max(sum(tasks) / workers, max(tasks))
    with mp.Pool(workers) as pool:
        pool.map(spin, [0.0] * workers)
        start = time.perf_counter()
        pool.map(spin, tasks)
        elapsed = time.perf_counter() - start
    emit("skewed_makespan", elapsed / ideal, "x ideal", None, ideal_ms=ideal * 1e3, makespan_ms=elapsed * 1e3)


def bench_lock(_workers):
    lock = mp.Lock()
    rounds = 200_000
    start = time.perf_counter()
    for _ in range(rounds):
        lock.acquire()
        lock.release()
    emit("lock_acquire_release", (time.perf_counter() - start) * 1e9 / rounds, "ns")


def queue_consumer(queue, n, out):
    total = 0
    for _ in range(n):
        total += queue.get()
    out.put(total)


def bench_queue(_workers):
    n = 200_000
    rates = []
    for _ in range(3):
        queue, out = mp.Queue(), mp.Queue()
        consumer = mp.Process(target=queue_consumer, args=(queue, n, out))
        start = time.perf_counter()
        consumer.start()
        for i in range(n):
            queue.put(i)
        out.get()
        rates.append(n / (time.perf_counter() - start))
        consumer.join()
    emit("queue_throughput", statistics.median(rates), "items/s", rates)


def pipe_echo(conn):
    for value in iter(conn.recv, None):
        conn.send(value)


def bench_pipe(_workers):
    """A round trip through multiprocessing.Pipe() to a process that echoes (bench_pool.cpp's BM_pipe_round_trip)."""
    parent, child = mp.Pipe()
    echo = mp.Process(target=pipe_echo, args=(child,))
    echo.start()
    for i in range(1000):
        parent.send(i)
        parent.recv()
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(20000):
            parent.send(i)
            parent.recv()
        samples.append((time.perf_counter() - start) * 1e6 / 20000)
    parent.send(None)
    echo.join()
    emit("pipe_round_trip", statistics.median(samples), "us", samples)


def dict_ops(d, lock, op, n):
    """The operations bench_pool.cpp's BM_shared_dict times: set, get, or d[k] += 1 on one key under the lock."""
    for i in range(n):
        key = f"k{i % 1000}"
        if op == "set":
            d[key] = i
        elif op == "get":
            d.get(key)
        else:
            with lock:
                d["counter"] += 1


def dict_process(d, lock, op, n, ready, go):
    dict_ops(d, lock, op, 10)  # connects this process to the manager before the clock starts
    ready.set()
    go.wait()
    dict_ops(d, lock, op, n)


def bench_manager_dict(_workers):
    """Manager().dict() (the Python guides' way to share a dict), from 1 process (this one) and from 2."""
    with mp.Manager() as manager:
        d = manager.dict({f"k{i}": i for i in range(1000)})
        d["counter"] = 0
        lock = manager.Lock()
        for op, n in (("set", 5000), ("get", 5000), ("increment", 1000)):
            for processes in (1, 2):
                rates = []
                for _ in range(3):
                    if processes == 1:
                        start = time.perf_counter()
                        dict_ops(d, lock, op, n)
                    else:
                        go = mp.Event()
                        ready = [mp.Event() for _ in range(processes)]
                        children = [mp.Process(target=dict_process, args=(d, lock, op, n, ready[p], go))
                                    for p in range(processes)]
                        for child in children:
                            child.start()
                        for r in ready:
                            r.wait()
                        start = time.perf_counter()
                        go.set()
                        for child in children:
                            child.join()
                    rates.append(processes * n / (time.perf_counter() - start))
                name = f"dict_{op}_{processes}proc" + ("s" if processes > 1 else "")
                emit(name, statistics.median(rates), "ops/s", rates)


WORKLOADS = {
    "apply_round_trip": bench_apply_round_trip,
    "apply_after_caller_work": lambda workers: bench_apply_round_trip(workers, caller_work_us=20, calls=2000),
    "apply_async_burst": bench_apply_async_burst,
    "map_tiny": bench_map_tiny,
    "imap": bench_imap,
    "large_payloads": bench_large_payloads,
    "start_teardown": bench_start_teardown,
    "cpu_scaling": bench_cpu_scaling,
    "skew": bench_skew,
    "lock": bench_lock,
    "queue": bench_queue,
    "pipe": bench_pipe,
    "manager_dict": bench_manager_dict,
}


def main():
    workers = len(os.sched_getaffinity(0))
    names = sys.argv[1:] or list(WORKLOADS)
    for name in names:
        WORKLOADS[name](workers)


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
