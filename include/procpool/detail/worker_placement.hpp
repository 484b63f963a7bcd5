// procpool internals: where the workers run while a stream of tiny tasks goes through the pool.
//
// A stream of tiny tasks (an apply_async burst, an imap at chunksize 1) keeps a thread of the parent busy: the caller
// submits, polls the result rings and consumes, at a few hundred nanoseconds per task, while the workers need a
// fraction of a CPU between them. When there are as many workers as CPUs, the kernel often puts that thread on a
// CPU with a worker: the two then take turns, the caller's polling holds up the very worker it waits for, and the
// service thread takes over the rings on the other CPU. Measured on the benchmark VM (2 CPUs, 2 workers;
// benchmarks/bench_placement.cpp): ordered imap at chunksize 1 ran at 0.9-1.3 M items/s with the threads placed by
// the kernel, and at 3.0-3.2 M with the workers kept off the caller's CPU.
//
// WorkerPlacement keeps the workers off the CPU of the thread that last submitted or polled, and the pool's service
// thread on it, while the workers' measured task time fills less than half of the other CPUs at a high rate of
// results, and gives them every CPU again as soon as that stops (the tasks grow, the stream pauses). It decides once per window of a few milliseconds,
// so it changes the workers' affinity at most that often, and never touches a worker whose affinity someone else
// set (an initializer pinning its worker, say).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include <sched.h>
#include <sys/types.h>

namespace procpool::detail {

class WorkerPlacement {
public:
    /// Decisions are made once per this much time (monotonic ns).
    static constexpr std::int64_t kWindowNs = 2'000'000;
    /// A window longer than this (no results for a while): the stream paused, the workers get every CPU back.
    static constexpr std::int64_t kPauseNs = 20'000'000;
    /// A stream is at least this many results per window (100 000 a second).
    static constexpr std::uint64_t kStreamResults = 200;
    /// The workers are kept off a CPU while their task time fills at most this share of the others, and get it back
    /// above `kReleaseShare`.
    static constexpr double kKeepShare = 0.5;
    static constexpr double kReleaseShare = 0.75;

    /// Inactive: never moves a worker.
    WorkerPlacement() noexcept { CPU_ZERO(&usable_); }
    /// For `workers` workers on the CPUs this process may use now. Inactive unless they are at least 2 and the
    /// workers as many as they (with a CPU to spare, the kernel has room for the caller).
    explicit WorkerPlacement(std::size_t workers) noexcept : WorkerPlacement() {
        if (::sched_getaffinity(0, sizeof usable_, &usable_) != 0) return;
        cpus_ = CPU_COUNT(&usable_);
        active_ = cpus_ >= 2 && workers >= static_cast<std::size_t>(cpus_);
    }

    /// Whether it may ever move workers.
    [[nodiscard]] bool active() const noexcept { return active_; }
    /// The CPU the workers are kept off now, -1 for none.
    [[nodiscard]] int kept_off() const noexcept { return kept_off_; }

    /// A result came, with `busy_ns` of worker time, at `now`; `caller_cpu` is the CPU the thread that last submitted
    /// or polled ran on (-1 if unknown). Once per window, returns where the workers should run when that changes:
    /// the CPU to keep them off, or -1 for every CPU. The caller then calls move() for each live worker and
    /// moved().
    [[nodiscard]] std::optional<int> on_result(std::uint64_t busy_ns, std::int64_t now, int caller_cpu) noexcept {
        if (!active_) return std::nullopt;
        busy_ns_ += busy_ns;
        ++results_;
        last_result_ = now;
        if (window_start_ == 0) window_start_ = now;
        const std::int64_t length = now - window_start_;
        if (length < kWindowNs) return std::nullopt;
        const double used_cpus = static_cast<double>(busy_ns_) / static_cast<double>(length);
        const double other_cpus = static_cast<double>(cpus_ - 1);
        const bool stream = results_ >= kStreamResults && length < kPauseNs;
        const bool valid_cpu = caller_cpu >= 0 && caller_cpu < CPU_SETSIZE && CPU_ISSET(caller_cpu, &usable_);
        window_start_ = now;
        busy_ns_ = 0;
        results_ = 0;
        if (kept_off_ >= 0) {
            if (!stream || !valid_cpu || used_cpus > kReleaseShare * other_cpus) return -1;
            if (caller_cpu != kept_off_) return caller_cpu;  // the caller moved: follow it
        } else if (stream && valid_cpu && used_cpus <= kKeepShare * other_cpus) {
            return caller_cpu;
        }
        return std::nullopt;
    }

    /// Work is submitted at `now`: -1 if the workers are kept off a CPU but no result came for a while (the stream is
    /// over; this work may need every CPU), else nothing. (Not when the pool merely runs dry: an imap's reader lets
    /// it run dry between two batches of its read-ahead.)
    [[nodiscard]] std::optional<int> on_submit(std::int64_t now) const noexcept {
        if (kept_off_ < 0 || now - last_result_ < kPauseNs) return std::nullopt;
        return -1;
    }

    /// Sets worker `pid`'s affinity to the usable CPUs without `cpu` (every usable CPU if -1), if it is now the one
    /// this class gives for `from` (-1: every usable CPU): an affinity someone else chose stays, and so does one the
    /// kernel refuses to change (the worker is gone). True if the worker has the placement for `cpu` now.
    [[nodiscard]] bool move(pid_t pid, int cpu, int from) const noexcept {
        if (pid <= 0) return false;
        cpu_set_t now;
        CPU_ZERO(&now);
        if (::sched_getaffinity(pid, sizeof now, &now) != 0) return false;
        const cpu_set_t expected = mask_for(from);
        if (!CPU_EQUAL(&now, &expected)) return false;
        cpu_set_t wanted = mask_for(cpu);
        return CPU_EQUAL(&now, &wanted) || ::sched_setaffinity(pid, sizeof wanted, &wanted) == 0;
    }
    /// Every live worker was move()d to `cpu`'s placement.
    void moved(int cpu) noexcept { kept_off_ = cpu; }

    /// Puts the pool's own thread `tid` (the service thread) on `cpu`, with the caller, or back on every usable CPU
    /// (-1). On the workers' CPUs it takes turns with workers that poll their task rings without a pause during a
    /// stream: the apply_async burst ran at a median of 1.90 M tasks/s left there, 2.11 M beside the caller (four
    /// alternating runs of bench_placement).
    void place_own_thread(pid_t tid, int cpu) const noexcept {
        if (tid <= 0) return;
        cpu_set_t mask;
        CPU_ZERO(&mask);
        if (cpu >= 0) {
            CPU_SET(cpu, &mask);
        } else {
            mask = usable_;
        }
        (void)::sched_setaffinity(tid, sizeof mask, &mask);
    }

private:
    /// The usable CPUs without `cpu` (all of them if -1).
    [[nodiscard]] cpu_set_t mask_for(int cpu) const noexcept {
        cpu_set_t mask = usable_;
        if (cpu >= 0) CPU_CLR(cpu, &mask);
        return mask;
    }

    cpu_set_t usable_;
    int cpus_ = 0;
    bool active_ = false;
    int kept_off_ = -1;  // the CPU the workers are kept off, -1 for none
    std::int64_t window_start_ = 0;
    std::uint64_t busy_ns_ = 0;
    std::uint64_t results_ = 0;
    std::int64_t last_result_ = 0;
};

}  // namespace procpool::detail
