// procpool internals: the progress reports of a map or an imap (MapOptions::progress).
#pragma once

#include <chrono>
#include <cstdint>
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
    PROCPOOL_DECL void start(ProgressCallback callback, std::optional<std::uint64_t> total);
    /// `n` more items finished (delivered or failed).
    void add(std::uint64_t n) {
        if (callback_) record(n);
    }
    /// The job is over (all delivered, failed, or abandoned): the final report, once.
    PROCPOOL_DECL void finish();

private:
    /// add() with a callback.
    PROCPOOL_DECL void record(std::uint64_t n);
    PROCPOOL_DECL void report_locked(MonotonicClock::time_point now, bool final);

    ProgressCallback callback_;
    std::optional<std::uint64_t> total_;
    std::mutex mutex_;
    std::uint64_t done_ = 0;
    MonotonicClock::time_point start_;
    MonotonicClock::time_point last_;
    bool finished_ = false;
};

}  // namespace procpool::detail

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/progress_tracker.ipp"
#endif
