// procpool's headline demo: a CPU-bound function mapped over a container, timed with 1, 2, 4... workers,
// printed like the table in Python multiprocessing guides (processes, runtime, speedup vs 1 process).
//
//     ./speedup           full run
//     ./speedup --quick   a short run (used as a smoke test)
#include <procpool/procpool.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <vector>

// Counts the primes in [from, from + width): a few milliseconds of pure CPU work per item.
long count_primes(long from, long width) {
    long count = 0;
    for (long n = std::max(from, 2L); n < from + width; ++n) {
        bool prime = true;
        for (long d = 2; d * d <= n; ++d) {
            if (n % d == 0) {
                prime = false;
                break;
            }
        }
        count += prime ? 1 : 0;
    }
    return count;
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const long width = quick ? 2'000 : 20'000;
    std::vector<std::pair<long, long>> blocks;
    for (long i = 0; i < 200; ++i) blocks.emplace_back(1'000'000 + i * width, width);

    const std::size_t cpus = procpool::detail::usable_cpu_count();
    std::vector<std::size_t> counts{1};
    while (counts.back() < 2 * cpus) counts.push_back(counts.back() * 2);

    std::printf("Counting primes in %zu blocks of %ld numbers on a machine with %zu usable CPUs\n\n", blocks.size(),
                width, cpus);
    std::printf("| Processes | Runtime | Speedup vs 1 process |\n|---|---|---|\n");
    double single = 0;
    long expected = -1;
    for (std::size_t processes : counts) {
        procpool::Pool pool(processes);
        const auto start = std::chrono::steady_clock::now();
        const std::vector<long> per_block = pool.starmap(count_primes, blocks);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        const long total = std::accumulate(per_block.begin(), per_block.end(), 0L);
        if (expected < 0) expected = total;
        if (total != expected) {
            std::fprintf(stderr, "wrong result with %zu processes: %ld != %ld\n", processes, total, expected);
            return 1;
        }
        if (processes == 1) single = ms;
        std::printf("| %zu | %.0f ms | %.2fx |\n", processes, ms, single / ms);
    }
    std::printf("\n%ld primes found.\n", expected);
    return 0;
}
