// procpool internals: where the workers run while a stream of tiny tasks goes through the pool.
//
// A stream of tiny tasks (an imap at chunksize 1, an apply_async burst) keeps a thread of the parent busy: the caller
// submits, polls the result rings and consumes, at a few hundred nanoseconds per task, while the workers need a
// fraction of a CPU between them. When there are as many workers as CPUs, the kernel often puts that thread on a
// CPU with a worker: the two then take turns, the caller's polling holds up the very worker it waits for, and the
// service thread takes over the rings on the other CPU. Measured on the benchmark VM (2 CPUs, 2 workers;
// benchmarks/bench_placement.cpp, 6d8b051): ordered imap at chunksize 1 ran at 0.9-2.0 M items/s with the threads
// placed by the kernel, and at 3.0-3.2 M with the workers kept off the caller's CPU.
//
// WorkerPlacement decides, once per window of a few milliseconds, whether the workers keep off the CPU of the thread
// that last submitted or polled: while tasks and results come at 100 000 a second or more and the workers' measured
// task time fills at most half of the other CPUs. They get every CPU back when that stops (the tasks grow, the
// stream pauses), and before a task that may be long is sent (its job's item time unknown or over kLongTaskNs): a
// worker applies the placement to itself when it takes a task (Worker::follow_placement), so a long task never
// starts squeezed (an item far longer than its job's average still can). An apply_async burst is a new job per task,
// so it is never placed. The decisions are the scheduler's (under its lock), the affinity system calls the workers';
// a worker whose affinity someone else set (an initializer pinning it, a task) is left alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include <sched.h>

namespace procpool::detail {

class WorkerPlacement {
public:
    /// Decisions are made once per this much time (monotonic ns).
    static constexpr std::int64_t kWindowNs = 2'000'000;
    /// A window longer than this (no results for a while): the stream paused, the workers get every CPU back.
    static constexpr std::int64_t kPauseNs = 20'000'000;
    /// A stream is at least this many tasks submitted and results received per window (100 000 a second). Both
    /// count: while the service thread shares the caller's CPU, a burst's results wait until the caller stops
    /// submitting.
    static constexpr std::uint64_t kStreamEvents = 200;
    /// The workers are kept off a CPU while their task time fills at most this share of the others, and get it back
    /// above `kReleaseShare`.
    static constexpr double kKeepShare = 0.5;
    static constexpr double kReleaseShare = 0.75;
    /// A task longer than this (by its job's measured item time) is sent only with every CPU the workers'.
    static constexpr double kLongTaskNs = 100'000.0;

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

    /// A result came, with `busy_ns` of worker time, at `now`. True when a window is over: decide() is due.
    [[nodiscard]] bool add_result(std::uint64_t busy_ns, std::int64_t now) noexcept {
        if (!active_) return false;
        busy_ns_ += busy_ns;
        ++results_;
        last_result_ = now;
        if (window_start_ == 0) window_start_ = now;
        return now - window_start_ >= kWindowNs;
    }

    /// Ends the window at `now`: `caller_cpu` is the CPU the thread that last submitted or polled ran on (-1 if
    /// unknown), `long_work` whether a task that may be long is queued or running. Returns where the workers should
    /// run when that changes: the CPU to keep off, or -1 for every CPU.
    [[nodiscard]] std::optional<int> decide(std::int64_t now, int caller_cpu, bool long_work) noexcept {
        const std::int64_t length = now - window_start_;
        const double used_cpus = static_cast<double>(busy_ns_) / static_cast<double>(length);
        const double other_cpus = static_cast<double>(cpus_ - 1);
        // At least kStreamEvents per kWindowNs, however long the window ran.
        const bool stream = (results_ + submissions_) * static_cast<std::uint64_t>(kWindowNs) >=
                                kStreamEvents * static_cast<std::uint64_t>(length) &&
                            length < kPauseNs;
        const bool valid_cpu = caller_cpu >= 0 && caller_cpu < CPU_SETSIZE && CPU_ISSET(caller_cpu, &usable_);
        window_start_ = now;
        busy_ns_ = 0;
        results_ = 0;
        submissions_ = 0;
        if (kept_off_ >= 0) {
            if (!stream || !valid_cpu || long_work || used_cpus > kReleaseShare * other_cpus) return -1;
            if (caller_cpu != kept_off_) return caller_cpu;  // the caller moved: follow it
        } else if (stream && valid_cpu && !long_work && used_cpus <= kKeepShare * other_cpus) {
            return caller_cpu;
        }
        return std::nullopt;
    }

    /// Whether the workers keep off a CPU although no result came for a while before `now`: the stream is over, and
    /// they get every CPU back. Asked when work is submitted (it may need every CPU) and by the service thread's
    /// periodic look (which bounds how long they stay off it after a stream that no submission follows). Not when
    /// the pool merely runs dry: an imap's reader lets it run dry between two batches of its read-ahead.
    [[nodiscard]] bool paused(std::int64_t now) const noexcept {
        return kept_off_ >= 0 && now - last_result_ >= kPauseNs;
    }
    /// A task (or a batch of them) was submitted: counts towards a stream.
    void count_submission() noexcept { ++submissions_; }
    /// Whether a task of `items` items of `item_ns` each (0: not measured yet) may be long: the workers get every CPU
    /// before it is sent.
    [[nodiscard]] static bool long_task(double item_ns, std::uint64_t items) noexcept {
        return item_ns <= 0 || item_ns * static_cast<double>(items) > kLongTaskNs;
    }

    /// The workers keep off `cpu` from now on (-1: every CPU is theirs).
    void moved(int cpu) noexcept { kept_off_ = cpu; }

private:
    cpu_set_t usable_;
    int cpus_ = 0;
    bool active_ = false;
    int kept_off_ = -1;  // the CPU the workers are kept off, -1 for none
    std::int64_t window_start_ = 0;
    std::uint64_t busy_ns_ = 0;
    std::uint64_t results_ = 0;
    std::uint64_t submissions_ = 0;
    std::int64_t last_result_ = 0;
};

}  // namespace procpool::detail
