// procpool internals: the progress reports of a map or an imap (MapOptions::progress).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>

#include "procpool/async_result.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/options.hpp"

namespace procpool::detail {

/// Reports a job's progress to a MapOptions::progress callback: at most every 100 ms and once at the end.
/// Without a callback it costs one branch per delivery.
class ProgressTracker {
public:
    void start(ProgressCallback callback, std::optional<std::uint64_t> total) {
        callback_ = std::move(callback);
        total_ = total;
        start_ = MonotonicClock::now();
        last_ = start_;
    }
    /// `n` more items finished (delivered or failed).
    void add(std::uint64_t n) {
        if (!callback_) return;
        std::lock_guard lock(mutex_);
        done_ += n;
        const auto now = MonotonicClock::now();
        const bool last = total_ && done_ >= *total_;
        if (!last && now - last_ < std::chrono::milliseconds(100)) return;
        last_ = now;
        report_locked(now, last);
    }
    /// The job is over (all delivered, failed, or abandoned): the final report, once.
    void finish() {
        if (!callback_) return;
        std::lock_guard lock(mutex_);
        report_locked(MonotonicClock::now(), true);
    }

private:
    void report_locked(MonotonicClock::time_point now, bool final) {
        if (finished_) return;
        finished_ = final;
        ProgressInfo info;
        info.done = done_;
        info.total = total_;
        info.elapsed = now - start_;
        info.rate = info.elapsed.count() > 0 ? static_cast<double>(done_) / info.elapsed.count() : 0;
        if (total_ && info.rate > 0) {
            info.remaining = std::chrono::duration<double>(static_cast<double>(*total_ - std::min(done_, *total_)) /
                                                           info.rate);
        }
        info.finished = final;
        try {
            callback_(info);
        } catch (...) {
            report_callback_exception("a progress callback");
        }
    }

    ProgressCallback callback_;
    std::optional<std::uint64_t> total_;
    std::mutex mutex_;
    std::uint64_t done_ = 0;
    MonotonicClock::time_point start_;
    MonotonicClock::time_point last_;
    bool finished_ = false;
};

}  // namespace procpool::detail
