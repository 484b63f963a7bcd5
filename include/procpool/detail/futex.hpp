// procpool internals: raw futex calls and the Doorbell, a cross-process eventcount on one shared word.
//
// std::atomic::wait/notify does not wake across processes (libstdc++ only issues a wake when the notifying
// process's own waiter table counts a waiter), so shared-memory waits use FUTEX_WAIT/FUTEX_WAKE directly, without
// the _PRIVATE flag. All waits retry on EINTR and take absolute CLOCK_MONOTONIC deadlines.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <ctime>
#include <linux/futex.h>
#include <optional>
#include <sys/syscall.h>
#include <unistd.h>

#include "procpool/detail/platform.hpp"
#include "procpool/detail/spin.hpp"

namespace procpool::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "a futex word must be a lock-free 32-bit atomic with the same layout as uint32_t");

/// Sleeps while `*word == expected`, until woken or `deadline`. Returns false only when the deadline passed.
/// Spurious returns are possible; callers re-check their condition. `shared` selects the cross-process form.
inline bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, Deadline deadline,
                       bool shared) noexcept {
    timespec abs{};
    if (deadline) abs = to_timespec(*deadline);
    const int op = FUTEX_WAIT_BITSET | (shared ? 0 : FUTEX_PRIVATE_FLAG);  // absolute CLOCK_MONOTONIC timeout
    const long rc = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), op, expected, deadline ? &abs : nullptr,
                            nullptr, FUTEX_BITSET_MATCH_ANY);
    return !(rc == -1 && errno == ETIMEDOUT);  // EINTR and EAGAIN are ordinary wake-ups
}

inline void futex_wake(std::atomic<std::uint32_t>& word, int count, bool shared) noexcept {
    const int op = FUTEX_WAKE | (shared ? 0 : FUTEX_PRIVATE_FLAG);
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), op, count, nullptr, nullptr, 0);
}

/// A cross-process eventcount. A waiter spins, then registers as a sleeper and sleeps on `epoch`; a notifier that
/// published new state rings only when someone sleeps, so a busy pair never makes a system call. Once a ring has
/// woken the sleepers, later rings make no system call either until one of them registers again (`woken`): a
/// producer that publishes many items while its consumer wakes up (tens of microseconds here) calls FUTEX_WAKE once,
/// not once per item.
/// Lives in shared memory: trivially copyable, lock-free, no pointers. Survives any party dying at any
/// instruction: a dead sleeper costs at most one spurious FUTEX_WAKE until reset().
struct Doorbell {
    std::atomic<std::uint32_t> epoch{0};
    std::atomic<std::uint32_t> sleepers{0};
    /// Nonzero while another thread of the waiting side polls for what the sleepers wait for (so waking them
    /// would only cost a system call). Whoever mutes must, after unmuting, look once more (see unmute()).
    std::atomic<std::uint32_t> muted{0};
    /// Nonzero once a ring() woke the sleepers; each sleeper clears it as it registers, after reading `epoch`.
    /// While set, ring() and wake_sleepers() skip the system call: whoever sleeps was woken, or will see `epoch`
    /// moved past what it read, or will see the state published (a sleeper clears it before a fence, a notifier
    /// reads it after its own: one of them sees the other).
    std::atomic<std::uint32_t> woken{0};

    /// Call after publishing state that may satisfy a waiter. Never blocks. Safe from any process.
    void ring() noexcept {
        std::atomic_thread_fence(std::memory_order_seq_cst);  // publish happens-before the sleepers check
        if (sleepers.load(std::memory_order_relaxed) != 0 && muted.load(std::memory_order_relaxed) == 0) wake_once();
    }
    /// ring() for state a muted poller does not look at: wakes sleepers even while muted, and still makes no system
    /// call when nobody sleeps. Never blocks. Safe from any process.
    void wake_sleepers() noexcept {
        std::atomic_thread_fence(std::memory_order_seq_cst);  // publish happens-before the sleepers check
        if (sleepers.load(std::memory_order_relaxed) != 0) wake_once();
    }
    void mute() noexcept { muted.store(1, std::memory_order_relaxed); }
    /// After this returns, a ring() that was muted has published state the caller's next look will see.
    void unmute() noexcept {
        muted.store(0, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the fence in ring()
    }
    void wake_all() noexcept {
        epoch.fetch_add(1, std::memory_order_release);
        futex_wake(epoch, INT_MAX, true);
    }

    /// Waits until `ready()` returns true or `deadline` passes; returns ready()'s last value. Spins for `spin`
    /// first. `ready` must read the state the notifier publishes before it calls ring().
    template <class Ready>
    bool wait(Ready&& ready, Deadline deadline, std::chrono::nanoseconds spin) noexcept(noexcept(ready())) {
        if (spin_until(ready, spin)) return true;
        for (;;) {
            sleepers.fetch_add(1, std::memory_order_relaxed);
            std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the fence in ring()
            const std::uint32_t seen = epoch.load(std::memory_order_acquire);
            // Cleared after `seen` is read: a ring between the two would otherwise leave `woken` set with its wake
            // already counted in `seen` (this sleeper would then sleep through every later ring). A ring that sets
            // it after this store moves `epoch` past `seen`; one that found it still set published before the fence.
            woken.store(0, std::memory_order_relaxed);
            std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the fence in ring(), for `woken`
            if (ready()) {
                sleepers.fetch_sub(1, std::memory_order_relaxed);
                return true;
            }
            const bool in_time = futex_wait(epoch, seen, deadline, true);
            sleepers.fetch_sub(1, std::memory_order_relaxed);
            if (ready()) return true;
            if (!in_time || (deadline && MonotonicClock::now() >= *deadline)) return false;
        }
    }

private:
    /// wake_all(), unless an earlier ring already woke the sleepers and none has registered since.
    void wake_once() noexcept {
        if (woken.load(std::memory_order_relaxed) == 0 && woken.exchange(1, std::memory_order_relaxed) == 0) {
            wake_all();
        }
    }

public:
    /// Forgets sleepers left behind by a process that died while waiting. Only when no one else uses the bell.
    void reset() noexcept {
        sleepers.store(0, std::memory_order_relaxed);
        woken.store(0, std::memory_order_relaxed);
        muted.store(0, std::memory_order_relaxed);
        wake_all();
    }
};
static_assert(std::is_trivially_destructible_v<Doorbell> && std::is_standard_layout_v<Doorbell>,
              "Doorbell lives in shared memory: it must hold no pointers and need no destructor");

}  // namespace procpool::detail
