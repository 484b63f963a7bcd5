// Where the parent's threads run, and what it does to the two workloads of tiny tasks that vary between runs on the
// benchmark VM: the apply_async burst (20 000 no-op tasks submitted, then gathered) and ordered imap at chunksize 1
// (200 000 items). Issue 19's analysis: not a benchmark of procpool's code, an experiment on thread placement.
//
// Each round builds a pool of one worker per usable CPU and places the threads one way (sched_setaffinity):
//   free        nothing pinned: the kernel places every thread, as in a user's program
//   parent-cpu  the caller's thread and the pool's own threads (the service thread) pinned to the first CPU; the
//               workers free
//   service     only the pool's own threads pinned to the first CPU
//   caller      only the caller's thread pinned to the first CPU
//   workers-away  the workers kept off the CPU the caller runs on when the pool starts; the parent's threads free
// The placements alternate round by round, so a phase of the machine touches all of them alike. Prints one
// markdown row per placement: median rates (and quartiles) over the rounds.
//
// Usage: bench_placement [rounds [placement]]   (default 20 rounds of all four placements, about 1.5 s a round on
// the 2-vCPU VM; a placement named runs that one alone)
#include <procpool/procpool.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ranges>
#include <set>
#include <string>
#include <vector>

#include <dirent.h>
#include <sched.h>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

int identity(int x) { return x; }

/// The thread ids of this process.
std::set<pid_t> threads_of_this_process() {
    std::set<pid_t> tids;
    if (DIR* dir = ::opendir("/proc/self/task")) {
        while (const dirent* entry = ::readdir(dir)) {
            if (entry->d_name[0] != '.') tids.insert(static_cast<pid_t>(std::atoi(entry->d_name)));
        }
        ::closedir(dir);
    }
    return tids;
}

/// Restricts thread `tid` to `cpus` (false if the kernel refused).
bool pin(pid_t tid, const cpu_set_t& cpus) { return ::sched_setaffinity(tid, sizeof cpus, &cpus) == 0; }

enum class Placement { free, parent_cpu, service, caller, workers_away };
constexpr Placement kPlacements[] = {Placement::free, Placement::parent_cpu, Placement::service, Placement::caller,
                                     Placement::workers_away};
const char* name_of(Placement placement) {
    switch (placement) {
        case Placement::free: return "free";
        case Placement::parent_cpu: return "parent-cpu";
        case Placement::service: return "service";
        case Placement::caller: return "caller";
        case Placement::workers_away: return "workers-away";
    }
    return "?";
}

struct Rates {
    std::vector<double> burst;  // M tasks/s
    std::vector<double> imap;   // M items/s
};

/// One round: a pool placed as `placement`, 10 bursts and 2 imaps, their rates added to `rates`.
void run_round(Placement placement, Rates& rates) {
    cpu_set_t allowed;
    if (::sched_getaffinity(0, sizeof allowed, &allowed) != 0) std::exit(1);
    int first_cpu = 0;
    while (!CPU_ISSET(first_cpu, &allowed)) ++first_cpu;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first_cpu, &one);

    const std::set<pid_t> before = threads_of_this_process();
    {
        procpool::Pool pool;
        pool.apply(identity, 0);
        const pid_t caller = ::gettid();
        if (placement == Placement::parent_cpu || placement == Placement::caller) pin(caller, one);
        if (placement == Placement::parent_cpu || placement == Placement::service) {
            for (const pid_t tid : threads_of_this_process()) {
                if (!before.contains(tid)) pin(tid, one);  // the threads the pool started
            }
        }
        if (placement == Placement::workers_away) {
            cpu_set_t others = allowed;
            CPU_CLR(::sched_getcpu(), &others);
            if (CPU_COUNT(&others) != 0) {
                for (const pid_t worker : pool.worker_pids()) pin(worker, others);
            }
        }
        for (int k = 0; k < 10; ++k) {
            const auto start = Clock::now();
            std::vector<procpool::AsyncResult<int>> results;
            results.reserve(20000);
            for (int i = 0; i < 20000; ++i) results.push_back(pool.apply_async(identity, i));
            long sum = 0;
            for (auto& result : results) sum += result.get();
            if (sum != 199990000L) std::exit(2);
            rates.burst.push_back(20000 / std::chrono::duration<double>(Clock::now() - start).count() / 1e6);
        }
        for (int k = 0; k < 2; ++k) {
            const auto start = Clock::now();
            long sum = 0;
            for (const int v : pool.imap(identity, std::views::iota(0, 200000), {.chunksize = 1})) sum += v;
            if (sum != 19999900000L) std::exit(3);
            rates.imap.push_back(200000 / std::chrono::duration<double>(Clock::now() - start).count() / 1e6);
        }
    }
    pin(::gettid(), allowed);  // the caller free again
}

/// "median (first quartile-third quartile)" of `values`.
std::string summary(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const auto at = [&](double q) {
        return values[static_cast<std::size_t>(q * static_cast<double>(values.size() - 1))];
    };
    char text[64];
    std::snprintf(text, sizeof text, "%.2f (%.2f-%.2f)", at(0.5), at(0.25), at(0.75));
    return text;
}

}  // namespace

int main(int argc, char** argv) {
    const int rounds = argc > 1 ? std::atoi(argv[1]) : 20;
    const std::string only = argc > 2 ? argv[2] : "";
    const auto chosen = [&](Placement placement) { return only.empty() || only == name_of(placement); };
    std::vector<Rates> rates(std::size(kPlacements));
    for (int round = 0; round < rounds; ++round) {
        for (std::size_t p = 0; p < std::size(kPlacements); ++p) {
            if (chosen(kPlacements[p])) run_round(kPlacements[p], rates[p]);
        }
    }
    std::printf(
        "| placement | apply_async burst, M tasks/s | ordered imap chunksize 1, M items/s |\n|---|---:|---:|\n");
    for (std::size_t p = 0; p < std::size(kPlacements); ++p) {
        if (!chosen(kPlacements[p])) continue;
        std::printf("| %s | %s | %s |\n", name_of(kPlacements[p]), summary(rates[p].burst).c_str(),
                    summary(rates[p].imap).c_str());
    }
    return 0;
}
