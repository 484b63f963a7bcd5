// procpool internals: the definitions of procpool/async_result.hpp (header-only: included by it; in the separately
// compiled mode: compiled by procpool/src.hpp).
#pragma once

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <exception>

#include "procpool/async_result.hpp"
#include "procpool/detail/futex.hpp"
#include "procpool/detail/spin.hpp"

namespace procpool::detail {

PROCPOOL_DECL void report_callback_exception(const char* what_callback) noexcept {
    try {
        throw;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "procpool: %s threw: %s\n", what_callback, e.what());
    } catch (...) {
        std::fprintf(stderr, "procpool: %s threw a non-standard exception\n", what_callback);
    }
}

PROCPOOL_DECL bool ReadyFlag::wait(Deadline deadline, std::chrono::nanoseconds spin) const noexcept {
    auto ready = [this] { return is_set(); };
    if (spin_until(ready, spin)) return true;
    for (;;) {
        std::uint32_t seen = word_.load(std::memory_order_acquire);
        if ((seen & kSet) != 0) return true;
        if ((seen & kWaiters) == 0 && !word_.compare_exchange_weak(seen, seen | kWaiters, std::memory_order_acq_rel)) {
            continue;
        }
        const bool in_time = futex_wait(word_, seen | kWaiters, deadline, false);
        if (is_set()) return true;
        if (!in_time || (deadline && MonotonicClock::now() >= *deadline)) return false;
    }
}

}  // namespace procpool::detail
