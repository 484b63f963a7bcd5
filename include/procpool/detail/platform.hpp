// procpool internals: the platform facts and small helpers every part uses: clocks and deadlines, the cache line,
// alignment. One home, so a port or a tuning changes one file.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <optional>

namespace procpool::detail {

/// Bytes of a cache line (x86-64 and the AArch64 cores Linux runs on): shared words written by different processes
/// sit this far apart so they do not share one.
inline constexpr std::size_t kCacheLine = 64;
/// Bytes of a page, for layouts of shared memory (mappings themselves ask sysconf).
inline constexpr std::size_t kPage = 4096;

/// `n` rounded up to a multiple of 8 (message parts are laid out on 8-byte boundaries).
constexpr std::uint64_t align8(std::uint64_t n) noexcept { return (n + 7) & ~std::uint64_t{7}; }
/// `n` rounded up to a multiple of `to`.
constexpr std::size_t round_up(std::size_t n, std::size_t to) noexcept { return (n + to - 1) / to * to; }

/// Every wait and deadline is on CLOCK_MONOTONIC (steady_clock on Linux): wall-clock changes move nothing.
using MonotonicClock = std::chrono::steady_clock;
/// A point to stop waiting at; empty means never.
using Deadline = std::optional<MonotonicClock::time_point>;

/// Now, in nanoseconds of CLOCK_MONOTONIC (what workers publish in shared memory).
inline std::int64_t monotonic_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(MonotonicClock::now().time_since_epoch()).count();
}

/// `when` as the absolute timespec the system calls take.
inline timespec to_timespec(MonotonicClock::time_point when) noexcept {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(when.time_since_epoch()).count();
    const auto clamped = ns < 0 ? 0 : ns;
    timespec at{};
    at.tv_sec = clamped / 1'000'000'000;
    at.tv_nsec = clamped % 1'000'000'000;
    return at;
}

/// The deadline `timeout` from now: now itself for a zero or negative timeout, never for one too long to represent.
template <class Rep, class Period>
Deadline deadline_after(std::chrono::duration<Rep, Period> timeout) {
    if (timeout <= std::chrono::duration<Rep, Period>::zero()) return MonotonicClock::now();
    const auto now = MonotonicClock::now();
    const auto room = std::chrono::duration_cast<std::chrono::duration<double>>(MonotonicClock::time_point::max() -
                                                                                now);
    if (std::chrono::duration_cast<std::chrono::duration<double>>(timeout) >= room) return std::nullopt;
    return now + std::chrono::ceil<MonotonicClock::duration>(timeout);
}

}  // namespace procpool::detail
