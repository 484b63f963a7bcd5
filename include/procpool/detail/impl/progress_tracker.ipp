// procpool internals: the definitions of detail/progress_tracker.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "procpool/async_result.hpp"
#include "procpool/detail/progress_tracker.hpp"
#include "procpool/options.hpp"

namespace procpool::detail {

PROCPOOL_DECL void ProgressTracker::start(ProgressCallback callback, std::optional<std::uint64_t> total) {
    if (!callback) {
        state_.reset();
        return;
    }
    auto state = std::make_unique<State>();
    state->callback = std::move(callback);
    state->total = total;
    state->start = MonotonicClock::now();
    state->last = state->start;
    state_ = std::move(state);
}

PROCPOOL_DECL void ProgressTracker::record(std::uint64_t n) {
    State& s = *state_;
    std::lock_guard lock(s.mutex);
    s.done += n;
    const auto now = MonotonicClock::now();
    const bool last = s.total && s.done >= *s.total;
    if (!last && now - s.last < std::chrono::milliseconds(100)) return;
    s.last = now;
    report_locked(now, last);
}

PROCPOOL_DECL void ProgressTracker::finish() {
    if (!state_) return;
    std::lock_guard lock(state_->mutex);
    report_locked(MonotonicClock::now(), true);
}

PROCPOOL_DECL void ProgressTracker::report_locked(MonotonicClock::time_point now, bool final) {
    State& s = *state_;
    if (s.finished) return;
    s.finished = final;
    ProgressInfo info;
    info.done = s.done;
    info.total = s.total;
    info.elapsed = now - s.start;
    info.rate = info.elapsed.count() > 0 ? static_cast<double>(s.done) / info.elapsed.count() : 0;
    if (s.total && info.rate > 0) {
        info.remaining = std::chrono::duration<double>(static_cast<double>(*s.total - std::min(s.done, *s.total)) /
                                                       info.rate);
    }
    info.finished = final;
    try {
        s.callback(info);
    } catch (...) {
        report_callback_exception("a progress callback");
    }
}

}  // namespace procpool::detail
