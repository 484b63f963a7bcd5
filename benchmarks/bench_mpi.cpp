// The MPI pool's figures on one machine, next to the fork pool's measured in the same program:
// apply round trip and map throughput. Run under mpirun (benchmarks/run.sh does): prints JSON lines on rank 0.
#include <procpool/mpi.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <string>
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

void emit(const char* workload, const char* transport, double value, const char* unit, std::size_t workers) {
    std::printf("{\"workload\": \"%s\", \"transport\": \"%s\", \"value\": %.6g, \"unit\": \"%s\", \"workers\": %zu}\n",
                workload, transport, value, unit, workers);
}

}  // namespace

int main(int argc, char** argv) {
    procpool::mpi::Session session(argc, argv);
    auto& pool = session.pool();  // other ranks serve from here
    const std::size_t workers = pool.size();
    emit("apply_round_trip", "mpi", apply_round_trip_us(pool), "us", workers);
    emit("map_tiny_2M", "mpi", map_items_per_second(pool), "items/s", workers);
    {
        procpool::Pool fork_pool(workers);  // the same number of workers, forked on this machine
        emit("apply_round_trip", "fork", apply_round_trip_us(fork_pool), "us", workers);
        emit("map_tiny_2M", "fork", map_items_per_second(fork_pool), "items/s", workers);
    }
    return 0;
}
