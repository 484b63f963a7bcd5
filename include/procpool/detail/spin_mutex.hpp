// procpool internals: a mutex for short critical sections that spins briefly before it sleeps.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>

#include "procpool/detail/futex.hpp"
#include "procpool/detail/spin.hpp"

namespace procpool::detail {

/// A Lockable mutex (process-private) whose contended lock() polls for a few hundred nanoseconds before it sleeps
/// on a futex: the scheduler's critical sections are far shorter than a futex round trip, and on a virtual machine
/// that system call costs microseconds. Drepper's three-state futex mutex ("Futexes are tricky") plus a spin.
class SpinMutex {
public:
    void lock() noexcept {
        std::uint32_t expected = kUnlocked;
        if (state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire)) return;
        for (int i = 0; i < 200; ++i) {
            cpu_relax();
            expected = kUnlocked;
            if (state_.load(std::memory_order_relaxed) == kUnlocked &&
                state_.compare_exchange_weak(expected, kLocked, std::memory_order_acquire)) {
                return;
            }
        }
        // Sleep: mark the mutex contended so the unlocker knows to wake someone.
        while (state_.exchange(kContended, std::memory_order_acquire) != kUnlocked) {
            futex_wait(state_, kContended, std::nullopt, false);
        }
    }
    bool try_lock() noexcept {
        std::uint32_t expected = kUnlocked;
        return state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire);
    }
    void unlock() noexcept {
        if (state_.exchange(kUnlocked, std::memory_order_release) == kContended) futex_wake(state_, 1, false);
    }

private:
    static constexpr std::uint32_t kUnlocked = 0;
    static constexpr std::uint32_t kLocked = 1;
    static constexpr std::uint32_t kContended = 2;
    std::atomic<std::uint32_t> state_{kUnlocked};
};

}  // namespace procpool::detail
