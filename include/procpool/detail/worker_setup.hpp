// procpool internals: what every worker does before its first task, whatever the transport (a forked worker,
// detail/worker.hpp; an MPI rank, detail/mpi_transport.hpp): cap its memory, run the initializer.
#pragma once

#include <cstddef>
#include <cstdio>
#include <functional>
#include <optional>
#include <sys/resource.h>
#include <unistd.h>

#include "procpool/detail/buffer.hpp"
#include "procpool/detail/exceptions.hpp"
#include "procpool/serialize.hpp"

namespace procpool::detail {

/// Caps the process's address space at what it has now plus `limit` (RLIMIT_AS), so a task that allocates too much
/// gets std::bad_alloc instead of the machine running out of memory. Nothing without a limit.
inline void apply_memory_limit(std::optional<std::size_t> limit) noexcept {
    if (!limit) return;
    std::size_t pages = 0;
    if (std::FILE* statm = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(statm, "%zu", &pages) != 1) pages = 0;
        std::fclose(statm);
    }
    const rlim_t cap = pages * static_cast<rlim_t>(::sysconf(_SC_PAGESIZE)) + *limit;
    const rlimit bounds{cap, cap};
    ::setrlimit(RLIMIT_AS, &bounds);
}

/// Runs the pool's initializer, if any. True when it returned; false when it threw, with the exception encoded into
/// `error` (a kInitFailedMessage body) for the transport to send to the pool.
inline bool run_initializer(const std::function<void()>& initializer, Buffer& error) noexcept {
    if (!initializer) return true;
    try {
        initializer();
        return true;
    } catch (...) {
        try {
            error.clear();
            OutputArchive ar(error);
            encode_current_exception(ar);
        } catch (...) {
            error.clear();  // (no memory to describe it: the pool still learns that the initializer failed)
        }
        return false;
    }
}

}  // namespace procpool::detail
