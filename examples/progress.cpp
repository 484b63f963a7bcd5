// Progress reports for a long map, the tqdm recipe of Python multiprocessing guides:
//
//     with Pool() as pool:
//         results = list(tqdm(pool.imap(simulate, seeds), total=len(seeds), desc="simulating"))
//
// procpool takes the report as a map option: {.progress = procpool::progress_bar("simulating")} draws a tqdm-like
// bar on stderr (redrawn in place on a terminal, a line every 10% otherwise), and any callback of ProgressInfo
// (done, total, elapsed, rate, remaining, finished) can print its own lines. Reports come at most every 100 ms and
// once at the end, in the parent process; the callback is a std::function and may capture anything.
// Each item is a small Monte Carlo estimate of pi; the results are checked against a serial run.
//
//     ./progress            2000 simulations (several seconds on 2 cores, serial check included)
//     ./progress --quick    400 (the smoke test)
#include <procpool/procpool.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <ranges>
#include <vector>

// The task: how many of 200,000 random points of the unit square fall in the quarter circle (seeded, deterministic).
long simulate(long seed) {
    std::uint64_t state = static_cast<std::uint64_t>(seed) * 0x9e3779b97f4a7c15ULL + 1;
    auto uniform = [&state] {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;  // xorshift64
        return static_cast<double>(state >> 11) * 0x1.0p-53;
    };
    long hits = 0;
    for (int i = 0; i < 200'000; ++i) {
        const double x = uniform(), y = uniform();
        hits += x * x + y * y <= 1.0 ? 1 : 0;
    }
    return hits;
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const long n = quick ? 400 : 2000;
    procpool::Pool pool;
    bool ok = true;

    const auto seeds = std::views::iota(0L, n);

    // 1. The ready-made bar.
    const std::vector<long> hits = pool.map(simulate, seeds, {.progress = procpool::progress_bar("simulating")});

    // 2. A callback of one's own (runs in this process: it may capture by reference).
    long reports = 0;
    procpool::ProgressInfo last;
    auto print_progress = [&](const procpool::ProgressInfo& info) {
        ++reports;
        last = info;
        std::printf("  [%5.2f s] %4llu/%llu simulations, %6.1f per second", info.elapsed.count(),
                    static_cast<unsigned long long>(info.done), static_cast<unsigned long long>(info.total.value_or(0)),
                    info.rate);
        if (info.finished) {
            std::printf(", done\n");
        } else if (info.remaining) {
            std::printf(", about %.1f s left\n", info.remaining->count());
        } else {
            std::printf("\n");
        }
    };
    const std::vector<long> again = pool.map(simulate, seeds, {.progress = print_progress});

    const long total = std::accumulate(hits.begin(), hits.end(), 0L);
    const double pi = 4.0 * static_cast<double>(total) / (200'000.0 * static_cast<double>(n));
    std::printf("pi ~ %.5f from %ld simulations on %zu workers (%ld progress reports in the second run)\n", pi, n,
                pool.size(), reports);

    std::vector<long> serial;
    for (long seed = 0; seed < n; ++seed) serial.push_back(simulate(seed));
    if (hits != serial || again != serial) {
        std::fprintf(stderr, "FAILED: the results differ from a serial run\n");
        ok = false;
    }
    if (!last.finished || last.done != static_cast<std::uint64_t>(n) || last.total != static_cast<std::uint64_t>(n)) {
        std::fprintf(stderr, "FAILED: the last progress report is not the final one (%llu done)\n",
                     static_cast<unsigned long long>(last.done));
        ok = false;
    }
    if (std::abs(pi - std::acos(-1.0)) > 0.01) {
        std::fprintf(stderr, "FAILED: pi estimate %.5f is too far off\n", pi);
        ok = false;
    }
    if (ok) std::printf("matches a serial run\n");
    return ok ? 0 : 1;
}
