// procpool internals: the worker life-cycle events every transport reports to the scheduler.
#pragma once

#include <cstdint>

namespace procpool::detail {

enum WorkerEventKind : std::uint32_t { kWorkerSpawned = 1, kWorkerExited = 2, kSpawnFailed = 3 };

/// A worker was started, ended, or could not be started. Plain data: the fork server sends it over a socket.
struct WorkerEvent {
    std::uint32_t kind;
    std::uint32_t slot;
    std::int32_t pid;
    std::int32_t signal;     // kWorkerExited: the signal that killed it, 0 if it exited
    std::int32_t exit_code;  // kWorkerExited: its exit status if it exited
    std::int32_t error;      // kSpawnFailed: errno of fork()
};

}  // namespace procpool::detail
