// procpool internals: a mutex in shared memory that survives the death of its holder.
//
// Boost.Interprocess's interprocess_mutex is not usable here: it is not robust (Boost 1.74's blocks forever after
// an owner dies, 1.81's becomes unrecoverable for everyone; docs/design.md, "Shared objects: the shared heap").
// This is a PTHREAD_PROCESS_SHARED + PTHREAD_MUTEX_ROBUST pthread mutex: when a holder dies the kernel hands the
// mutex to the next locker with EOWNERDEAD, which makes it consistent at once (so it never becomes
// ENOTRECOVERABLE) and records that the previous holder died.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <ctime>
#include <pthread.h>
#include <system_error>
#include <type_traits>
#include <unistd.h>

#include "procpool/detail/futex.hpp"
#include "procpool/detail/process.hpp"
#include "procpool/errors.hpp"

namespace procpool::detail {

struct RobustMutex {
    pthread_mutex_t mutex;
    /// Set by a locker that took the mutex over from a dead holder; cleared when the holder unlocks.
    std::atomic<std::uint32_t> recovered;
    /// Recursion depth and thread id of the holder (0 when free), maintained by the holder.
    std::uint32_t depth;
    std::atomic<pid_t> owner;

    /// Initialises the mutex in place, in shared memory. Throws std::system_error.
    void init(bool recursive) {
        pthread_mutexattr_t attributes;
        pthread_mutexattr_init(&attributes);
        pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
        pthread_mutexattr_settype(&attributes, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
        const int rc = pthread_mutex_init(&mutex, &attributes);
        pthread_mutexattr_destroy(&attributes);
        if (rc != 0) throw std::system_error(rc, std::generic_category(), "procpool: pthread_mutex_init failed");
        recovered.store(0, std::memory_order_relaxed);
        depth = 0;
        owner.store(0, std::memory_order_relaxed);
    }

    /// True when the calling thread holds the mutex.
    [[nodiscard]] bool held() const noexcept { return owner.load(std::memory_order_relaxed) == current_thread_id(); }

    /// Locks, waiting until `deadline` (forever when empty). Returns false on timeout. A lock taken over from a
    /// holder that died is made consistent and counts as acquired (recovered() tells).
    ///
    /// A non-recursive mutex the calling thread holds already: without a deadline, PoolStateError (it would never
    /// be acquired); with one, false once the deadline has passed, as any other lock that stays taken.
    bool lock(Deadline deadline = std::nullopt) {
        int rc = 0;
        if (deadline) {
            const timespec abs = to_timespec(*deadline);
            rc = pthread_mutex_clocklock(&mutex, CLOCK_MONOTONIC, &abs);
            if (rc == EDEADLK) {
                sleep_until(*deadline);
                return false;
            }
        } else {
            rc = pthread_mutex_lock(&mutex);
        }
        return after_lock(rc);
    }
    /// Locks if it is free now; false otherwise (a non-recursive mutex the calling thread holds included: glibc
    /// answers EDEADLK there, where a plain mutex answers EBUSY).
    bool try_lock() {
        const int rc = pthread_mutex_trylock(&mutex);
        return rc == EDEADLK ? false : after_lock(rc);
    }

    /// Unlocks. Throws PoolStateError when the calling thread does not hold the mutex.
    void unlock() {
        if (!held()) throw PoolStateError("procpool: release() of a lock this thread does not hold");
        if (--depth == 0) {
            recovered.store(0, std::memory_order_relaxed);
            owner.store(0, std::memory_order_relaxed);
        }
        pthread_mutex_unlock(&mutex);
    }

private:
    static void sleep_until(MonotonicClock::time_point deadline) noexcept {
        const timespec abs = to_timespec(deadline);
        while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &abs, nullptr) == EINTR) {
        }
    }

    bool after_lock(int rc) {
        if (rc == EOWNERDEAD) {
            // The holder died holding it: take it over. Its depth died with it.
            pthread_mutex_consistent(&mutex);
            recovered.store(1, std::memory_order_relaxed);
            depth = 0;
            rc = 0;
        }
        if (rc == ETIMEDOUT || rc == EBUSY) return false;
        if (rc == EDEADLK)
            throw PoolStateError("procpool: acquire() of a non-recursive lock this thread already holds");
        if (rc != 0) throw std::system_error(rc, std::generic_category(), "procpool: locking a shared mutex failed");
        ++depth;
        owner.store(current_thread_id(), std::memory_order_relaxed);
        return true;
    }
};
static_assert(std::is_standard_layout_v<RobustMutex>, "RobustMutex lives in shared memory");

/// A boost::posix_time::ptime, recognised by its shape: Boost.Interprocess' timed_lock(abs_time) passes one.
template <class T>
concept BoostPtime = requires(const T& time) {
    typename T::date_type;
    typename T::time_duration_type;
    { time.is_pos_infinity() } -> std::convertible_to<bool>;
    { time.is_special() } -> std::convertible_to<bool>;
    { (time - time).ticks() } -> std::convertible_to<std::int64_t>;  // NOLINT(misc-redundant-expression): a shape
};

/// Locks `mutex` as Boost.Interprocess' timed_lock(abs_time) does: waits until `abs_time`, read as UTC; pos_infin
/// waits forever, neg_infin and not_a_date_time do not wait. True when acquired; blocks.
///
/// A template, so that Boost.Date_Time's headers (about 0.3 s of compile time, issue 18) are needed only in the
/// files that pass a ptime, which include them anyway. UTC now is std::chrono::system_clock, the clock Boost's
/// microsec_clock::universal_time reads.
template <BoostPtime Ptime>
bool lock_until_utc(RobustMutex& mutex, const Ptime& abs_time) {
    if (abs_time.is_pos_infinity()) return mutex.lock();
    if (abs_time.is_special()) return mutex.try_lock();
    using Duration = typename Ptime::time_duration_type;
    const Ptime epoch(typename Ptime::date_type(1970, 1, 1));
    const std::int64_t ticks = static_cast<std::int64_t>((abs_time - epoch).ticks());
    const std::int64_t per_second = static_cast<std::int64_t>(Duration::ticks_per_second());
    // Ticks are microseconds (Boost's default) or nanoseconds (BOOST_DATE_TIME_POSIX_TIME_STD_CONFIG).
    const std::int64_t since_epoch_us = per_second >= 1'000'000 ? ticks / (per_second / 1'000'000)
                                                                : ticks * (1'000'000 / per_second);
    const std::chrono::system_clock::time_point utc{std::chrono::microseconds(since_epoch_us)};
    return mutex.lock(MonotonicClock::now() + (utc - std::chrono::system_clock::now()));
}

}  // namespace procpool::detail
