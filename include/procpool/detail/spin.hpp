// procpool internals: bounded spinning before a thread or process goes to sleep.
#pragma once

#include <chrono>
#include <sched.h>

namespace procpool::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

/// Polls `ready()` for up to `budget`, relaxing the CPU between polls and yielding it to other runnable threads
/// after the first microseconds (on a machine with fewer cores than busy threads a pure spin would only delay the
/// thread it waits for). Returns true as soon as ready() does, false when the budget ran out.
template <class Ready>
bool spin_until(Ready& ready, std::chrono::nanoseconds budget) noexcept(noexcept(ready())) {
    if (ready()) return true;
    if (budget <= std::chrono::nanoseconds::zero()) return false;
    const auto start = std::chrono::steady_clock::now();
    for (unsigned round = 1;; ++round) {
        if (round < 64) {
            cpu_relax();
        } else {
            sched_yield();
        }
        if (ready()) return true;
        if ((round & 7) == 0 && std::chrono::steady_clock::now() - start >= budget) return false;
    }
}

}  // namespace procpool::detail
