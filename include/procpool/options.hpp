// procpool: options for a pool and for one map call.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>

#include "procpool/detail/config.hpp"

namespace procpool {

/// How a Pool is built. Fields in declaration order, for designated initializers:
///     procpool::Pool pool(procpool::PoolOptions{.processes = 4, .task_timeout = std::chrono::seconds(5)});
struct PoolOptions {
    /// Number of workers; nullopt = the CPUs this process may run on. 0 throws std::invalid_argument.
    std::optional<std::size_t> processes{};
    /// Runs once in each new worker (replacements too) before its first task. If it throws or crashes, the pool
    /// is broken: unfinished results fail with that error and later submissions throw PoolStateError.
    std::function<void()> initializer{};
    /// A worker is replaced after running this many items (calls of the task function); nullopt = never.
    /// 0 throws std::invalid_argument.
    std::optional<std::size_t> max_tasks_per_child{};
    /// An item running longer than this is killed together with its worker and fails with TaskTimeout;
    /// nullopt = no limit. Zero or negative throws std::invalid_argument.
    std::optional<std::chrono::milliseconds> task_timeout{};

    // ---- beyond Python's Pool ----
    /// Bytes of address space each worker may add to what it inherits from your program (RLIMIT_AS): a task
    /// allocating past it fails with std::bad_alloc (or WorkerCrashed, if the allocation cannot throw), not the
    /// pool. nullopt = no limit. 0 throws std::invalid_argument.
    std::optional<std::size_t> memory_limit{};
    /// Capacity in bytes of each worker's task ring and result ring (a power of two, at least 4096). Values larger
    /// than a ring stream through it; a bigger ring only lowers the number of hand-offs for large values.
    std::size_t ring_bytes = std::size_t{1} << 18;
    /// Re-runs an item whose worker crashed, or was killed past task_timeout, up to this many times (on another
    /// worker when there is one) before it fails with WorkerCrashed or TaskTimeout. For idempotent tasks: an item
    /// that died half-way may have done part of its work. 0 (the default): never. Over MPI each rank retries on its
    /// own workers. (An exception a task throws is its result, never retried.)
    std::size_t retries = 0;
};

/// How far a map has got, for a progress report.
struct ProgressInfo {
    std::uint64_t done = 0;                                  // items finished (successfully or not)
    std::optional<std::uint64_t> total;                      // items in all, when known (map; imap over a sized range)
    std::chrono::duration<double> elapsed{};                 // since the map started
    double rate = 0;                                         // items per second so far
    std::optional<std::chrono::duration<double>> remaining;  // estimated time left, when the total is known
    bool finished = false;                                   // the last report of this map
};

/// Receives progress reports: at most every 100 ms, and once at the end. Runs in the thread that delivers results
/// (the pool's service thread, or a thread waiting for results); keep it short.
using ProgressCallback = std::function<void(const ProgressInfo&)>;

/// Options for map/imap/imap_unordered/starmap and their async forms.
struct MapOptions {
    /// Items sent to a worker at once; 0 lets the pool choose (and adapt it to the measured item time).
    std::size_t chunksize = 0;
    /// imap/imap_unordered: items read from the input and not yet consumed at most (Python 3.14's
    /// Executor.map(buffersize=)). 0 (the default): a few thousand (1024 per worker, at least 4096) with automatic
    /// chunks, a window of chunks (4 per worker and 8 more; for small items up to 64 items per worker and 8 more)
    /// with a chunksize of yours. A bound, not a target: the pool reads only as far ahead as keeps its workers busy.
    /// Below chunksize, or given to map/starmap (which read their whole input), it throws std::invalid_argument.
    std::size_t buffersize = 0;
    /// Progress reports; empty (the default) costs nothing. procpool::progress_bar() draws one on stderr.
    ProgressCallback progress{};
};

namespace detail {

/// Throws std::invalid_argument for options no pool can honour (each transport refuses what it cannot do itself).
PROCPOOL_DECL void validate(const PoolOptions& options);

}  // namespace detail

}  // namespace procpool

#ifdef PROCPOOL_HEADER_ONLY
#include "procpool/detail/impl/options.ipp"
#endif
