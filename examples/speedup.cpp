// procpool's headline demo: a CPU-bound function mapped over a container, timed with 1, 2, 4... workers,
// printed like the table in Python multiprocessing guides (processes, runtime, speedup vs 1 process).
//
// Wall time alone misleads on a shared machine: another job taking a core makes 2 workers look no faster than 1.
// So each run also reports the CPU time the workers got per second of wall time (how many of them computed at once,
// whatever the machine's clock speed did between runs), and the CPU time other processes took meanwhile (from
// /proc/stat); when that is large, a note says the wall-time figures are distorted.
//
//     ./speedup           full run
//     ./speedup --quick   a short run (used as a smoke test)
#include <procpool/procpool.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <string>
#include <sys/resource.h>
#include <vector>

namespace {

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

double seconds(const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6; }

/// CPU seconds used by this process (RUSAGE_SELF) or by its children that have been reaped, with their own
/// descendants (RUSAGE_CHILDREN): the fork server reaps the workers, and the pool reaps the fork server when it ends.
double cpu_seconds(int who) {
    rusage usage{};
    ::getrusage(who, &usage);
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

/// CPU seconds the whole machine spent busy so far (every CPU; /proc/stat), 0 if unknown. Time a hypervisor gave
/// to other machines (steal) counts as busy: this VM's CPUs were not ours then either.
double machine_busy_seconds() {
    std::ifstream stat("/proc/stat");
    std::string cpu;
    unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
    if (!(stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal) || cpu != "cpu") return 0;
    const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
    return static_cast<double>(user + nice + system + irq + softirq + steal) / ticks;
}

}  // namespace

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
    std::printf(
        "| Processes | Runtime | Speedup vs 1 process | Workers computing at once (CPU time) | "
        "Other load |\n|---|---|---|---|---|\n");
    double single = 0;
    double single_cpu = 0;
    long expected = -1;
    double worst_other = 0;
    std::size_t worst_at = 0;
    double worst_drift = 1;  // CPU time of a run over the 1-process run's, farthest from 1
    std::size_t drift_at = 0;
    for (std::size_t processes : counts) {
        const double children_before = cpu_seconds(RUSAGE_CHILDREN);
        const double self_before = cpu_seconds(RUSAGE_SELF);
        double ms = 0;
        double busy = 0;
        std::vector<long> per_block;
        {
            procpool::Pool pool(processes);
            const double busy_before = machine_busy_seconds();
            const auto start = std::chrono::steady_clock::now();
            per_block = pool.starmap(count_primes, blocks);
            ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
            busy = machine_busy_seconds() - busy_before;
        }  // the pool ends: its workers' CPU time is now in RUSAGE_CHILDREN
        const double workers_cpu = cpu_seconds(RUSAGE_CHILDREN) - children_before;
        const double ours = workers_cpu + (cpu_seconds(RUSAGE_SELF) - self_before);
        const double wall = ms / 1000.0;
        // Cores other processes kept busy while the map ran (ours includes the pool's start and end: a slight
        // underestimate).
        const double other = busy > 0 ? std::max(0.0, (busy - ours) / wall) : 0.0;
        if (other > worst_other) {
            worst_other = other;
            worst_at = processes;
        }

        const long total = std::accumulate(per_block.begin(), per_block.end(), 0L);
        if (expected < 0) expected = total;
        if (total != expected) {
            std::fprintf(stderr, "wrong result with %zu processes: %ld != %ld\n", processes, total, expected);
            return 1;
        }
        if (processes == 1) {
            single = ms;
            single_cpu = workers_cpu;
        }
        // The same work should take the same CPU time in every run; when it does not, the machine ran at another
        // speed (a VM's clock drifts, turbo), which moves wall times but not the CPU-time column.
        const double drift = single_cpu > 0 ? workers_cpu / single_cpu : 1;
        if (std::abs(drift - 1) > std::abs(worst_drift - 1)) {
            worst_drift = drift;
            drift_at = processes;
        }
        std::printf("| %zu | %.0f ms | %.2fx | %.2f | %.2f CPUs |\n", processes, ms, single / ms, workers_cpu / wall,
                    other);
    }
    std::printf("\n%ld primes found.\n", expected);
    std::printf(
        "\"Workers computing at once\" is the workers' CPU time per second of wall time: at most the number of "
        "processes\nand of usable CPUs. It does not depend on the clock speed, which on a VM drifts between "
        "runs.\n");
    if (std::abs(worst_drift - 1) > 0.1) {
        std::printf(
            "\nNote: the same work took %.2fx the CPU time in the %zu-process run as with 1 process: the CPU "
            "ran at another\nspeed (a VM's clock drifts; turbo), which moves the wall-time speedups. The "
            "CPU-time column does not\ndepend on it.\n",
            worst_drift, drift_at);
    }
    if (worst_other > 0.25) {
        std::printf(
            "\nNote: other processes kept %.2f of the %zu CPUs busy during the %zu-process run (more than a "
            "quarter of one):\nthe wall times above, and the speedups computed from them, are distorted by "
            "that load. Run again on an\nidle machine; the CPU-time column shows what the pool got meanwhile.\n",
            worst_other, cpus, worst_at);
    }
    return 0;
}
