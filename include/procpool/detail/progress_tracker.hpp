// procpool internals: the progress reports of a map or an imap (MapOptions::progress).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "procpool/async_result.hpp"
#include "procpool/detail/config.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/options.hpp"

namespace procpool::detail {

/// Reports a job's progress to a MapOptions::progress callback: at most every 100 ms and once at the end.
/// Without a callback it costs one branch per delivery.
class ProgressTracker {
public:
    /// Reports to `callback` from now on (nothing if it is empty). Before the job is visible to other threads.
    PROCPOOL_DECL void start(ProgressCallback callback, std::optional<std::uint64_t> total);
    /// `n` more items finished (delivered or failed).
    void add(std::uint64_t n) {
        if (state_) record(n);
    }
    /// The job is over (all delivered, failed, or abandoned): the final report, once.
    PROCPOOL_DECL void finish();

private:
    /// add() with a callback.
    PROCPOOL_DECL void record(std::uint64_t n);
    PROCPOOL_DECL void report_locked(MonotonicClock::time_point now, bool final);

    /// Made by start() with a callback only: most jobs report no progress, and this would take 120 bytes of every
    /// apply_async's record.
    struct State {
        ProgressCallback callback;
        std::optional<std::uint64_t> total;
        std::mutex mutex;
        std::uint64_t done = 0;
        MonotonicClock::time_point start;
        MonotonicClock::time_point last;
        bool finished = false;
    };
    std::unique_ptr<State> state_;
};

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/progress_tracker.ipp"
#endif
