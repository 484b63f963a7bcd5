// Where the workers run during a stream of tiny tasks (detail/worker_placement.hpp): kept off the caller's CPU while
// the stream lasts when there are as many workers as CPUs, every CPU again once it is over, and an affinity someone
// else gave a worker left as it is.
#include <catch2/catch.hpp>
#include <procpool/procpool.hpp>

#include <sched.h>

#include <chrono>
#include <optional>
#include <ranges>
#include <thread>
#include <vector>

namespace {

int identity(int x) { return x; }

/// Run in a worker: how many CPUs it may run on now.
int own_cpu_count(int /*unused*/) {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    return ::sched_getaffinity(0, sizeof mask, &mask) == 0 ? CPU_COUNT(&mask) : -1;
}

/// Run in a worker: the same, for a task the pool has never timed (so it may be long).
int own_cpu_count_untimed(int unused) { return own_cpu_count(unused); }

/// The CPUs this process may use.
cpu_set_t usable_cpus() {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    REQUIRE(::sched_getaffinity(0, sizeof mask, &mask) == 0);
    return mask;
}

/// The CPUs this process may use, or nothing (with a warning) if they are too few to keep the workers off one.
std::optional<cpu_set_t> cpus_to_place() {
    const cpu_set_t usable = usable_cpus();
    if (CPU_COUNT(&usable) >= 2) return usable;
    WARN("one usable CPU: there is no CPU to keep the workers off");
    return std::nullopt;
}

/// The lowest and the highest CPU in `cpus` (-1 if it is empty).
int lowest_cpu(const cpu_set_t& cpus) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (CPU_ISSET(cpu, &cpus)) return cpu;
    }
    return -1;
}
int highest_cpu(const cpu_set_t& cpus) {
    for (int cpu = CPU_SETSIZE - 1; cpu >= 0; --cpu) {
        if (CPU_ISSET(cpu, &cpus)) return cpu;
    }
    return -1;
}

/// Lets the calling thread run on `cpu` only; true if it could.
bool pin_this_thread(int cpu) noexcept {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return ::sched_setaffinity(0, sizeof one, &one) == 0;
}

/// The affinity of process `pid` (all zero if it is gone).
cpu_set_t affinity_of(pid_t pid) {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    (void)::sched_getaffinity(pid, sizeof mask, &mask);
    return mask;
}

/// The CPU every worker is kept off: the one usable CPU none of them may use, the same for all; -1 if there is none.
int cpu_kept_off(const std::vector<pid_t>& workers, const cpu_set_t& usable) {
    int kept_off = -1;
    for (const pid_t pid : workers) {
        const cpu_set_t mask = affinity_of(pid);
        if (CPU_COUNT(&mask) != CPU_COUNT(&usable) - 1) return -1;
        int missing = -1;
        for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
            if (CPU_ISSET(cpu, &usable) && !CPU_ISSET(cpu, &mask)) missing = cpu;
        }
        if (missing < 0 || (kept_off >= 0 && missing != kept_off)) return -1;
        kept_off = missing;
    }
    return kept_off;
}

/// Gives the calling thread back the affinity it had when this was made, when it ends.
class CallerPinned {
public:
    CallerPinned() noexcept { (void)::sched_getaffinity(0, sizeof before_, &before_); }
    CallerPinned(const CallerPinned&) = delete;
    CallerPinned& operator=(const CallerPinned&) = delete;
    ~CallerPinned() { (void)::sched_setaffinity(0, sizeof before_, &before_); }

private:
    cpu_set_t before_{};
};

/// Streams no-op items through an imap at chunksize 1 until `seen()` is true (checked every 100 items) or 20 s have
/// passed; true if it was.
template <class Seen>
bool stream_until(procpool::Pool& pool, Seen seen) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    long items = 0;
    for (const int v : pool.imap(identity, std::views::iota(0), {.chunksize = 1})) {
        (void)v;
        if (++items % 100 != 0) continue;
        if (seen()) return true;
        if (std::chrono::steady_clock::now() > deadline) return false;
    }
    return false;
}

}  // namespace

TEST_CASE("a stream of tiny tasks keeps the workers off the caller's CPU, and every CPU is theirs after it",
          "[placement]") {
    const std::optional<cpu_set_t> placeable = cpus_to_place();
    if (!placeable) return;
    const cpu_set_t& usable = *placeable;
    procpool::Pool pool;  // as many workers as usable CPUs
    const std::vector<pid_t> workers = pool.worker_pids();
    REQUIRE(static_cast<int>(workers.size()) == CPU_COUNT(&usable));

    int kept_off = -1;
    int caller_cpu = -1;
    const bool seen = stream_until(pool, [&] {
        kept_off = cpu_kept_off(workers, usable);
        caller_cpu = ::sched_getcpu();
        return kept_off >= 0;
    });
    REQUIRE(seen);
    INFO("kept off CPU " << kept_off << ", the caller on CPU " << caller_cpu);
    CHECK(CPU_ISSET(kept_off, &usable));

    // The stream over, the tasks of the next job run with every CPU: a worker follows the placement when it takes a
    // task, and a job's first tasks (its item time unknown) go out with every CPU the workers'.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (const int cpus : pool.map(own_cpu_count, std::vector<int>(64), {.chunksize = 1})) {
        CHECK(cpus == CPU_COUNT(&usable));
    }
}

TEST_CASE("the CPU the workers keep off is the caller's, and follows it to another", "[placement]") {
    const std::optional<cpu_set_t> placeable = cpus_to_place();
    if (!placeable) return;
    const cpu_set_t& usable = *placeable;
    procpool::Pool pool;  // built before the caller is pinned: its service thread and workers may use every CPU
    const std::vector<pid_t> workers = pool.worker_pids();
    const CallerPinned unpin_at_end;
    for (const int caller_cpu : {highest_cpu(usable), lowest_cpu(usable)}) {
        REQUIRE(pin_this_thread(caller_cpu));
        int kept_off = -1;
        const bool seen = stream_until(pool, [&] {
            kept_off = cpu_kept_off(workers, usable);
            return kept_off == caller_cpu;
        });
        INFO("the caller pinned to CPU " << caller_cpu << ", the workers last kept off CPU " << kept_off);
        CHECK(seen);
    }
}

TEST_CASE("a task that may be long runs with every CPU even in the middle of a stream of tiny tasks", "[placement]") {
    const std::optional<cpu_set_t> placeable = cpus_to_place();
    if (!placeable) return;
    const cpu_set_t& usable = *placeable;
    procpool::Pool pool;
    const std::vector<pid_t> workers = pool.worker_pids();
    REQUIRE(stream_until(pool, [&] { return cpu_kept_off(workers, usable) >= 0; }));
    // No pause: a function the pool has never timed goes out with every CPU given back first.
    CHECK(pool.apply(own_cpu_count_untimed, 0) == CPU_COUNT(&usable));
}

TEST_CASE("a worker pinned by its initializer stays pinned through a stream of tiny tasks", "[placement]") {
    const std::optional<cpu_set_t> placeable = cpus_to_place();
    if (!placeable) return;
    const cpu_set_t& usable = *placeable;
    const int first_cpu = lowest_cpu(usable);
    procpool::Pool pool(procpool::PoolOptions{.initializer = [first_cpu] {
        if (!pin_this_thread(first_cpu)) throw std::runtime_error("sched_setaffinity failed");
    }});
    CHECK(pool.apply(identity, 1) == 1);
    const std::vector<pid_t> workers = pool.worker_pids();
    bool moved = false;
    // As long as the first test's stream took to be placed, at least: had the placement moved these workers, the
    // release below would give them every CPU.
    (void)stream_until(pool, [&, start = std::chrono::steady_clock::now()] {
        for (const pid_t pid : workers) {
            const cpu_set_t mask = affinity_of(pid);
            moved = moved || CPU_COUNT(&mask) != 1 || !CPU_ISSET(first_cpu, &mask);
        }
        return std::chrono::steady_clock::now() - start > std::chrono::milliseconds(500);
    });
    CHECK_FALSE(moved);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK(pool.apply(identity, 7) == 7);
    for (const pid_t pid : workers) {
        const cpu_set_t mask = affinity_of(pid);
        CHECK(CPU_COUNT(&mask) == 1);
        CHECK(CPU_ISSET(first_cpu, &mask));
    }
}

TEST_CASE("a stream of tiny tasks that pauses gives the workers every CPU back", "[placement]") {
    const std::optional<cpu_set_t> placeable = cpus_to_place();
    if (!placeable) return;
    const cpu_set_t& usable = *placeable;
    procpool::Pool pool;
    const std::vector<pid_t> workers = pool.worker_pids();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    bool kept_off = false;
    bool paused = false;
    bool every_cpu_after_pause = false;
    long items = 0;
    long after_pause = 0;
    // One imap: its item time is known (tiny) by the pause, so only the pause can give the CPUs back. Items read
    // after it report the CPUs their worker had when it took them.
    for (const int cpus : pool.imap(own_cpu_count, std::views::iota(0), {.chunksize = 1})) {
        ++items;
        if (!kept_off) {
            kept_off = items % 100 == 0 && cpu_kept_off(workers, usable) >= 0;
            if (!kept_off && std::chrono::steady_clock::now() > deadline) break;
            continue;
        }
        if (!paused) {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));  // several housekeeping periods
            paused = true;
            continue;
        }
        every_cpu_after_pause = every_cpu_after_pause || cpus == CPU_COUNT(&usable);
        if (every_cpu_after_pause || ++after_pause == 20000) break;
    }
    REQUIRE(kept_off);
    CHECK(every_cpu_after_pause);
}
