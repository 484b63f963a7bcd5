// procpool internals: PROCPOOL_ASSERT(condition, message), for the invariants the code relies on.
//
// Checked in debug and sanitizer builds (NDEBUG not defined) or with PROCPOOL_ENABLE_ASSERTS; compiled out of release
// builds, so an invariant costs nothing where it is trusted. A failure prints the condition, the message and where,
// then aborts: in a worker that is a crash the pool reports (WorkerCrashed), in the parent a core dump to read.
// Written like FMT_ASSERT: a statement, the condition evaluated once, never for its side effects.
#pragma once

#include <cstdio>
#include <cstdlib>

#if !defined(NDEBUG) || defined(PROCPOOL_ENABLE_ASSERTS)
#define PROCPOOL_ASSERTS_ENABLED 1
#define PROCPOOL_ASSERT(condition, message) \
    ((condition) ? static_cast<void>(0) : ::procpool::detail::assertion_failed(#condition, message, __FILE__, __LINE__))
#else
#define PROCPOOL_ASSERTS_ENABLED 0
#define PROCPOOL_ASSERT(condition, message) static_cast<void>(0)
#endif

namespace procpool::detail {

[[noreturn, gnu::cold]] inline void assertion_failed(const char* condition, const char* message, const char* file,
                                                     int line) noexcept {
    std::fprintf(stderr, "procpool: internal invariant broken at %s:%d: %s (%s)\n", file, line, message, condition);
    std::abort();
}

}  // namespace procpool::detail
