// Crashing and hanging tasks, contained. In Python:
//
//     with Pool(task_timeout=...) as pool:      # (no such option: a hung task keeps its worker forever)
//         for r in pool.imap(task, range(16)):  # a segfaulting task: multiprocessing.Pool waits forever for its
//             ...                               # result; ProcessPoolExecutor fails *every* pending future with
//                                               # BrokenProcessPool and cannot be used again
//
// With procpool the item whose worker died fails alone with procpool::WorkerCrashed (pid(), signal(), exit_code()),
// the item that ran past PoolOptions::task_timeout fails alone with procpool::TaskTimeout, every other item
// gets its value, the dead workers are replaced and the pool goes on. Shown twice: per item with imap (an
// iterator whose item failed throws when dereferenced; incrementing it moves on), and per task with apply_async.
// The program checks that exactly the bad items failed, with the right error, and exits non-zero otherwise.
#include <procpool/procpool.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <ranges>
#include <string>
#include <sys/resource.h>
#include <thread>
#include <vector>

constexpr int kSegfault = 3, kAbort = 7, kHang = 11, kExit = 13;

// The task: item 3 segfaults, 7 aborts, 11 hangs, 13 calls exit(3); the others square their argument.
long task(int i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a little work, so items spread over workers
    switch (i) {
        case kSegfault: std::raise(SIGSEGV); break;
        case kAbort: std::abort();
        case kHang: std::this_thread::sleep_for(std::chrono::hours(1)); break;
        case kExit: std::exit(3);
        default: break;
    }
    return static_cast<long>(i) * i;
}

// What happened to one item, as text; checks it against what should have happened.
bool report(int i, const std::function<long()>& get) {
    char line[256];
    bool ok = false;
    try {
        const long value = get();
        ok = value == static_cast<long>(i) * i && i != kSegfault && i != kAbort && i != kHang && i != kExit;
        std::snprintf(line, sizeof line, "%ld", value);
    } catch (const procpool::WorkerCrashed& e) {
        ok = (i == kSegfault && e.signal() == SIGSEGV) || (i == kAbort && e.signal() == SIGABRT) ||
             (i == kExit && e.signal() == 0 && e.exit_code() == 3);
        if (e.signal() != 0) {
            std::snprintf(line, sizeof line, "WorkerCrashed: worker %d killed by SIG%s (signal %d)",
                          static_cast<int>(e.pid()), sigabbrev_np(e.signal()), e.signal());
        } else {
            std::snprintf(line, sizeof line, "WorkerCrashed: worker %d exited with code %d", static_cast<int>(e.pid()),
                          e.exit_code());
        }
    } catch (const procpool::TaskTimeout& e) {
        ok = i == kHang;
        std::snprintf(line, sizeof line, "TaskTimeout: over %lld ms, worker %d killed",
                      static_cast<long long>(e.timeout().count()), static_cast<int>(e.pid()));
    } catch (const std::exception& e) {
        std::snprintf(line, sizeof line, "unexpected error: %s", e.what());
    }
    std::printf("  item %2d: %-56s %s\n", i, line, ok ? "ok" : "WRONG");
    return ok;
}

int main() {
    // Crashing workers would write core files: not in an example (workers inherit this limit).
    const rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);

    procpool::Pool pool(procpool::PoolOptions{.processes = 3, .task_timeout = std::chrono::seconds(1)});
    const std::size_t size = pool.size();
    const std::vector<pid_t> pids_before = pool.worker_pids();
    bool ok = true;

    std::printf("imap over items 0..15 (item %d segfaults, %d aborts, %d hangs, %d calls exit(3)), timeout 1 s:\n",
                kSegfault, kAbort, kHang, kExit);
    auto results = pool.imap(task, std::views::iota(0, 16), {.chunksize = 1});
    int i = 0;
    for (auto it = results.begin(); it != results.end(); ++it, ++i) {
        ok = report(i, [&] { return *it; }) && ok;
    }
    ok = ok && i == 16;

    std::printf("\napply_async, one task each:\n");
    std::vector<procpool::AsyncResult<long>> futures;
    for (int k : {1, kSegfault, 5, kAbort, kHang, 8, kExit}) futures.push_back(pool.apply_async(task, k));
    for (std::size_t k = 0; k < futures.size(); ++k) {
        const int item = std::vector<int>{1, kSegfault, 5, kAbort, kHang, 8, kExit}[k];
        ok = report(item, [&] { return futures[k].get(); }) && ok;
    }

    // The pool is whole again: same size, the dead workers replaced, and it still computes. (A replacement is
    // forked in the background: for a few ms after a crash worker_pids() may list one worker less.)
    const std::vector<long> squares = pool.map([](long x) { return x * x; }, std::views::iota(0L, 1000L));
    std::vector<pid_t> pids_after = pool.worker_pids();
    for (int wait = 0; wait < 200 && pids_after.size() != size; ++wait) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        pids_after = pool.worker_pids();
    }
    const long replaced = std::count_if(pids_before.begin(), pids_before.end(), [&](pid_t pid) {
        return std::find(pids_after.begin(), pids_after.end(), pid) == pids_after.end();
    });
    long sum = 0;
    for (long s : squares) sum += s;
    std::printf(
        "\npool size %zu before, %zu after; %ld of the first workers were replaced; "
        "a later map of 1000 squares sums to %ld\n",
        size, pool.size(), replaced, sum);
    if (pool.size() != size || pids_after.size() != size || replaced < 1 || sum != 332'833'500) {
        std::printf("FAILED: the pool did not recover (%zu live workers)\n", pids_after.size());
        ok = false;
    }
    std::printf(ok ? "every fault was contained\n" : "FAILED\n");
    return ok ? 0 : 1;
}
