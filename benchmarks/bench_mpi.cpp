// The MPI pool's figures on one machine, next to the fork pool's measured in the same program: apply round trip and
// map throughput; and rank 0's dispatch capacity: tasks (chunks) and items it hands out per second, and the CPU time
// rank 0 spends per task and per item, from which benchmarks/README.md models when one rank 0 would starve 160, 1 000
// or 10 000 workers. Run under mpirun (benchmarks/run.sh does): prints JSON lines on rank 0.
#include <procpool/mpi.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <string>
#include <sys/resource.h>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

int identity(int x) { return x; }

template <class Pool>
double apply_round_trip_us(Pool& pool) {
    for (int i = 0; i < 500; ++i) pool.apply(identity, i);
    std::vector<double> samples;
    for (int i = 0; i < 5000; ++i) {
        const auto start = Clock::now();
        pool.apply(identity, i);
        samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
    std::sort(samples.begin(), samples.end());
    return samples[samples.size() / 2];
}

template <class Pool>
double map_items_per_second(Pool& pool) {
    std::vector<int> input(2'000'000);
    std::iota(input.begin(), input.end(), 0);
    pool.map([](int x) { return 2 * x; }, std::vector<int>(1000, 1));
    std::vector<double> rates;
    for (int r = 0; r < 5; ++r) {
        const auto start = Clock::now();
        const auto out = pool.map([](int x) { return 2 * x; }, input);
        rates.push_back(static_cast<double>(out.size()) / std::chrono::duration<double>(Clock::now() - start).count());
    }
    std::sort(rates.begin(), rates.end());
    return rates[rates.size() / 2];
}

double process_cpu_seconds() {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    const auto seconds = [](const timeval& t) {
        return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6;
    };
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

struct Dispatch {
    double items_per_second;
    double tasks_per_second;
    double cpu_us_per_task;  // rank 0's CPU time (every thread) per task
    double cpu_ns_per_item;
};

/// Rank 0 handing out tasks of `chunksize` tiny items (nothing to compute: the figures are rank 0's costs, and the
/// workers' own CPU time is the other ranks' business). Medians of 3 runs.
template <class Pool>
Dispatch dispatch(Pool& pool, std::size_t chunksize) {
    const std::size_t items = std::min<std::size_t>(std::size_t{4000} * chunksize, 2'000'000);
    std::vector<int> input(items);
    std::iota(input.begin(), input.end(), 0);
    pool.map(identity, std::vector<int>(chunksize * 8, 1), {.chunksize = chunksize});
    std::vector<Dispatch> runs;
    for (int r = 0; r < 3; ++r) {
        const double cpu_before = process_cpu_seconds();
        const auto start = Clock::now();
        const auto out = pool.map(identity, input, {.chunksize = chunksize});
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        const double cpu = process_cpu_seconds() - cpu_before;
        const double tasks = static_cast<double>(items) / static_cast<double>(chunksize);
        runs.push_back({static_cast<double>(out.size()) / seconds, tasks / seconds, cpu / tasks * 1e6,
                        cpu / static_cast<double>(items) * 1e9});
    }
    std::sort(runs.begin(), runs.end(),
              [](const Dispatch& a, const Dispatch& b) { return a.items_per_second < b.items_per_second; });
    return runs[1];
}

void emit(const char* workload, const char* transport, double value, const char* unit, std::size_t workers) {
    std::printf("{\"workload\": \"%s\", \"transport\": \"%s\", \"value\": %.6g, \"unit\": \"%s\", \"workers\": %zu}\n",
                workload, transport, value, unit, workers);
}

}  // namespace

int main(int argc, char** argv) {
    // One worker per rank's pool: on this 2-core machine the figures are rank 0's, not the workers'.
    procpool::mpi::Session session(argc, argv, procpool::PoolOptions{.processes = 1});
    auto& pool = session.pool();  // other ranks serve from here
    const std::size_t workers = pool.size();
    emit("apply_round_trip", "mpi", apply_round_trip_us(pool), "us", workers);
    emit("map_tiny_2M", "mpi", map_items_per_second(pool), "items/s", workers);
    for (const std::size_t chunksize : {std::size_t{1}, std::size_t{16}, std::size_t{256}, std::size_t{4096}}) {
        const Dispatch d = dispatch(pool, chunksize);
        const std::string name = "dispatch_chunksize_" + std::to_string(chunksize);
        emit((name + "_items").c_str(), "mpi", d.items_per_second, "items/s", workers);
        emit((name + "_tasks").c_str(), "mpi", d.tasks_per_second, "tasks/s", workers);
        emit((name + "_cpu_per_task").c_str(), "mpi", d.cpu_us_per_task, "us", workers);
        emit((name + "_cpu_per_item").c_str(), "mpi", d.cpu_ns_per_item, "ns", workers);
    }
    {
        procpool::Pool fork_pool(workers);  // the same number of workers, forked on this machine
        emit("apply_round_trip", "fork", apply_round_trip_us(fork_pool), "us", workers);
        emit("map_tiny_2M", "fork", map_items_per_second(fork_pool), "items/s", workers);
    }
    return 0;
}
