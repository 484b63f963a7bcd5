// procpool internals: the definitions of detail/progress_tracker.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>

#include "procpool/async_result.hpp"
#include "procpool/detail/progress_tracker.hpp"
#include "procpool/options.hpp"

namespace procpool::detail {

PROCPOOL_DECL void ProgressTracker::start(ProgressCallback callback, std::optional<std::uint64_t> total) {
    callback_ = std::move(callback);
    total_ = total;
    start_ = MonotonicClock::now();
    last_ = start_;
}

PROCPOOL_DECL void ProgressTracker::record(std::uint64_t n) {
    std::lock_guard lock(mutex_);
    done_ += n;
    const auto now = MonotonicClock::now();
    const bool last = total_ && done_ >= *total_;
    if (!last && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    report_locked(now, last);
}

PROCPOOL_DECL void ProgressTracker::finish() {
    if (!callback_) return;
    std::lock_guard lock(mutex_);
    report_locked(MonotonicClock::now(), true);
}

PROCPOOL_DECL void ProgressTracker::report_locked(MonotonicClock::time_point now, bool final) {
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

}  // namespace procpool::detail
